/* Make MKL take its Intel code paths on any x86-64 CPU, for `make test-dispatch` only.
 *
 * MKL (linked into torch) picks its kernels by CPU vendor and features: on a CPU that is not
 * Intel's it takes paths of its own and ignores MKL_ENABLE_INSTRUCTIONS, so an AMD machine cannot
 * otherwise reproduce what an Intel one computes. Preloaded (LD_PRELOAD), these two answer MKL's
 * vendor check with "Intel"; the instruction set is still what the CPU reports, capped by
 * MKL_ENABLE_INSTRUCTIONS. On an Intel CPU they change nothing. With it, this AMD EPYC reproduces
 * the five tests/test_batched_pool.py failures of issue 20 (an Intel Xeon, AVX-512) bit for bit.
 */
int mkl_serv_intel_cpu_true(void) { return 1; }
int mkl_serv_intel_cpu(void) { return 1; }
