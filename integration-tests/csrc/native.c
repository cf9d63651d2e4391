/* Native crashes for the crash dump tests: code no Rust panic hook sees. */
#include <stdlib.h>

/* A null pointer dereference, as a C library or a GPU driver would make one. */
__attribute__((noinline)) void syncra_native_null_deref(void) {
    volatile int *p = (volatile int *)0;
    *p = 42;
}

/* An abort from C (an assertion in a C library). */
__attribute__((noinline)) void syncra_native_abort(void) {
    abort();
}
