/* Counts and times the OpenMP parallel regions a process opens (GNU libgomp, as in the PyPI torch builds).

   gcc -O2 -shared -fPIC -o libgomp_regions.so gomp_regions.c -ldl
   LD_PRELOAD=$PWD/libgomp_regions.so python benchmarks/profiling/load_profile.py ...

   load_profile.py reads the counters through ctypes (gomp_regions_count, gomp_regions_ns, gomp_regions_histogram). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <string.h>
#include <time.h>

typedef void (*parallel_fn)(void (*)(void *), void *, unsigned, unsigned);
static parallel_fn real_parallel;
static unsigned long long regions, region_ns, histogram[32]; /* histogram[b]: regions of 2^b to 2^(b+1) ns */

static unsigned long long now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1000000000ull + t.tv_nsec;
}

void GOMP_parallel(void (*fn)(void *), void *data, unsigned threads, unsigned flags) {
  if (!real_parallel) real_parallel = (parallel_fn)dlsym(RTLD_NEXT, "GOMP_parallel");
  unsigned long long start = now_ns();
  real_parallel(fn, data, threads, flags);
  unsigned long long spent = now_ns() - start;
  int bucket = 0;
  while ((spent >> bucket) > 1 && bucket < 31) bucket++;
  regions++;
  region_ns += spent;
  histogram[bucket]++;
}

void gomp_regions_reset(void) { regions = region_ns = 0; memset(histogram, 0, sizeof histogram); }
unsigned long long gomp_regions_count(void) { return regions; }
unsigned long long gomp_regions_ns(void) { return region_ns; }
unsigned long long gomp_regions_histogram(int bucket) { return histogram[bucket]; }
