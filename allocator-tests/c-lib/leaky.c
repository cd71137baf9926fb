/* C code for leakscope's tests (allocator-tests/c_heap.rs): what a C
 * library allocates, frees and leaks. Built -O2 without frame pointers, as
 * distributions build their libraries. Every block leaked here is lost on
 * purpose; the counts are in the Rust side's doc comments. */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* Written and then cleared, so that the compiler keeps each allocation. */
static void *volatile sink;

/* A block a global holds: still reachable (not static, so that the
 * compiler keeps the store). */
void *c_kept;

/* n strings, each strdup'd and lost (25 bytes each). */
void c_lost_strings(int n) {
    for (int i = 0; i < n; i++)
        sink = strdup("a string C code forgets.");
    sink = 0;
}

struct node {
    struct node *child;
    char payload[40];
};

/* A node (48 bytes, malloc) owning a child (48 bytes, calloc), both lost:
 * one definitely, one indirectly. */
void c_lost_tree(void) {
    struct node *n = malloc(sizeof *n);
    n->child = calloc(1, sizeof *n);
    n->child->child = 0;
    sink = n;
    sink = 0;
}

/* A block grown by realloc (16, 64, then 256 bytes), lost at 256. */
void c_lost_realloc(void) {
    char *p = malloc(16);
    p = realloc(p, 64);
    p = realloc(p, 256);
    sink = p;
    sink = 0;
}

/* posix_memalign (100 bytes, 64-aligned) and aligned_alloc (64 bytes,
 * 32-aligned), both lost; and a memalign freed. */
void c_lost_aligned(void) {
    void *p = 0;
    if (posix_memalign(&p, 64, 100) == 0)
        sink = p;
    sink = aligned_alloc(32, 64);
    free(memalign(128, 10));
    sink = 0;
}

/* Blocks handed out, for the caller to free with free(). */
void *c_give(size_t n) { return malloc(n); }

/* A block of 77 bytes a global keeps. */
void c_keep(void) { c_kept = malloc(77); }

static void *worker(void *arg) {
    int n = *(int *)arg;
    void *blocks[64];
    for (int i = 0; i < n && i < 64; i++)
        blocks[i] = malloc(32);
    /* Every other block freed here, the rest lost. */
    for (int i = 0; i < n && i < 64; i += 2)
        free(blocks[i]);
    memset(blocks, 0, sizeof blocks);
    sink = blocks;
    sink = 0;
    return 0;
}

/* A thread of the C library's own: it allocates n blocks of 32 bytes,
 * frees every other one and loses the rest. */
void c_thread(int n) {
    pthread_t t;
    if (pthread_create(&t, 0, worker, &n) == 0)
        pthread_join(t, 0);
}

/* Blocks for another thread to free: n of 48 bytes, in `out`. */
void c_alloc_for(void **out, int n) {
    for (int i = 0; i < n; i++)
        out[i] = malloc(48);
}

/* Frees what another thread allocated. */
void c_free_all(void **blocks, int n) {
    for (int i = 0; i < n; i++)
        free(blocks[i]);
}

/* For the model test: one call each, kept out of line (the store after
 * the call keeps it from being a tail call, so the record's first frame
 * is the C function). */
void *c_m_malloc(size_t n) {
    void *p = malloc(n);
    sink = p;
    return p;
}

void *c_m_calloc(size_t n) {
    void *p = calloc(1, n);
    sink = p;
    return p;
}

void *c_m_realloc(void *old, size_t n) {
    void *p = realloc(old, n);
    sink = p;
    return p;
}

void c_m_free(void *p) {
    free(p);
    sink = 0;
}

struct call {
    void (*f)(void *);
    void *arg;
};

static void *trampoline(void *arg) {
    struct call *c = arg;
    c->f(c->arg);
    return 0;
}

/* Runs f(arg) on a thread of C's own, and waits for it; 0 if it ran. */
int c_run_on_thread(void (*f)(void *), void *arg) {
    struct call c = {f, arg};
    pthread_t t;
    if (pthread_create(&t, 0, trampoline, &c) != 0)
        return -1;
    return pthread_join(t, 0);
}
