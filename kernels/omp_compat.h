/* OpenMP when the build has it, a single-threaded stand-in when it does not. */
#ifndef LLAMANP_OMP_COMPAT_H
#define LLAMANP_OMP_COMPAT_H
#ifdef _OPENMP
#include <omp.h>
#define LLAMANP_OPENMP 1
/* Every thread of the enclosing parallel region waits here until all have arrived (its writes are then seen). */
static inline void team_barrier(void) {
#pragma omp barrier
}
#else
#define LLAMANP_OPENMP 0
static inline int omp_get_max_threads(void) { return 1; }
static inline int omp_get_thread_num(void) { return 0; }
static inline int omp_get_num_threads(void) { return 1; }
static inline void team_barrier(void) {}
#endif
#endif
