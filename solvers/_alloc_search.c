/* The depth-first search of solvers/alloc_search.py, in C for speed (same algorithm,
 * same flags, same node and backtrack counts). Called through ctypes; see that module
 * for the method. Indices are local: buffers 0..n-1 (fixed buffers excluded), sections
 * 0..S-1, boundary k sits between sections k-1 and k. Sizes and offsets are in units of
 * the problem's common divisor. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int64_t i64;

enum { F_CANONICAL = 1, F_SECTION = 2, F_UNALLOC = 4, F_MONOTONIC = 8, F_DOMINANCE = 16,
       F_DYNAMIC_ORDER = 32, F_DECOMPOSE = 64, F_SYMMETRY = 128, F_HATLESS = 256 };
enum { FOUND = 1, NOT_FOUND = 0, NODE_LIMIT = -1, TIMEOUT = -2, NO_MEMORY = -3 };

typedef struct {
  int n, S, flags;
  i64 cap;
  const i64 *size, *align;
  const i64 *width;          /* lifetime length, for the preordering */
  const int *s0, *s1, *twin, *heur;
  int nheur;                 /* preordering keys: 'T', 'A', 'W' or 'Z', compared descending */
  const int *nb_start, *nb;  /* movable buffers overlapping each buffer in time */
  const int *sb_start, *sb;  /* buffers alive in each section */
  const int *fx_start;       /* fixed buffers overlapping each buffer: offset ranges */
  const i64 *fx_lo, *fx_hi;
  i64 *m, *floor, *total, *sol;
  char *placed;
  int *cuts, *rank, *by_rank;
  int *trail_idx; i64 *trail_val; int trail_top;  /* undo trail of m and floor */
  i64 *cand; int cand_top, cand_cap;               /* stack of candidate keys */
  i64 nodes, backtracks, node_limit;
  double deadline;
} Ctx;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static i64 align_up(i64 v, i64 a) { return (v + a - 1) / a * a; }

/* The lowest aligned offset >= t at which buffer c clears every fixed buffer it meets. */
static i64 lift(const Ctx *x, int c, i64 t) {
  i64 v = align_up(t, x->align[c]);
  for (int moved = 1; moved;) {
    moved = 0;
    for (int j = x->fx_start[c]; j < x->fx_start[c + 1]; ++j)
      if (v < x->fx_hi[j] && x->fx_lo[j] < v + x->size[c]) { v = align_up(x->fx_hi[j], x->align[c]); moved = 1; }
  }
  return v;
}

static int cmp_i64(const void *a, const void *b) {
  i64 u = *(const i64 *)a, v = *(const i64 *)b;
  return (u > v) - (u < v);
}

/* Returns 0 when some section of [a, b) provably cannot hold its unplaced bytes. Only
 * sections in [lo, hi) changed their floor; the others need only the monotonic check. */
static int check(const Ctx *x, int a, int b, i64 last, int lo, int hi) {
  if (!(x->flags & F_SECTION)) return 1;
  int mono = (x->flags & F_MONOTONIC) && (x->flags & F_CANONICAL);
  if (mono)
    for (int s = a; s < b; ++s)
      if (x->total[s] > 0 && last + x->total[s] > x->cap) return 0;
  for (int s = lo; s < hi; ++s) {
    if (x->total[s] == 0) continue;
    i64 f = x->floor[s];
    if (x->flags & F_UNALLOC) {
      i64 u = INT64_MAX;
      for (int j = x->sb_start[s]; j < x->sb_start[s + 1]; ++j)
        if (!x->placed[x->sb[j]] && x->m[x->sb[j]] < u) u = x->m[x->sb[j]];
      if (u > f) f = u;
    }
    if (mono && last > f) f = last;
    if (f + x->total[s] > x->cap) return 0;
  }
  return 1;
}

static int search(Ctx *x, int a, int b, i64 last, int last_rank);

/* Preordering of the buffers of one part: keys computed when the part is formed. */
typedef struct { i64 key[4]; int c; } Pre;
static _Thread_local int pre_nkeys;

static int cmp_pre(const void *p, const void *q) {
  const Pre *u = p, *v = q;
  for (int k = 0; k < pre_nkeys; ++k)
    if (u->key[k] != v->key[k]) return u->key[k] > v->key[k] ? -1 : 1;
  return u->c - v->c;
}

static int cmp_int(const void *p, const void *q) { return *(const int *)p - *(const int *)q; }

/* Solves the unplaced buffers inside sections [a, b) as a part of their own: they are
 * ranked afresh by the preordering (the 'T' key counting only unplaced bytes), keeping
 * the set of rank values they held, and placed at offsets >= last. */
static int solve_part(Ctx *x, int a, int b, i64 last) {
  int k = 0, *old = malloc(sizeof(int) * (x->n + 1));
  Pre *pre = malloc(sizeof(Pre) * (x->n + 1));
  if (!old || !pre) { free(old); free(pre); return NO_MEMORY; }
  for (int c = 0; c < x->n; ++c) {
    if (x->placed[c] || x->s0[c] < a || x->s1[c] > b) continue;
    pre[k].c = c;
    for (int h = 0; h < x->nheur; ++h) {
      i64 v = 0;
      if (x->heur[h] == 'T')
        for (int s = x->s0[c]; s < x->s1[c]; ++s) v = x->total[s] > v ? x->total[s] : v;
      if (x->heur[h] == 'A') v = x->size[c] * x->width[c];
      if (x->heur[h] == 'W') v = x->width[c];
      if (x->heur[h] == 'Z') v = x->size[c];
      pre[k].key[h] = v;
    }
    old[k++] = x->rank[c];
  }
  pre_nkeys = x->nheur;
  qsort(pre, k, sizeof(Pre), cmp_pre);
  int *values = malloc(sizeof(int) * (k + 1));
  if (!values) { free(old); free(pre); return NO_MEMORY; }
  memcpy(values, old, sizeof(int) * k);
  qsort(values, k, sizeof(int), cmp_int);
  for (int i = 0; i < k; ++i) { x->rank[pre[i].c] = values[i]; x->by_rank[values[i]] = pre[i].c; }
  int st = search(x, a, b, last, -1);
  /* Restore the ranks the buffers held before (old[] is in index order). */
  for (int c = 0, j = 0; c < x->n && j < k; ++c)
    if (!x->placed[c] && x->s0[c] >= a && x->s1[c] <= b) { x->rank[c] = old[j]; x->by_rank[old[j]] = c; ++j; }
  free(old); free(pre); free(values);
  return st;
}

/* Places c at its minimum offset, searches on, undoes the placement. Sets *hatless when
 * the placement raised no other buffer's minimum offset. */
static int branch(Ctx *x, int a, int b, int c, int *hatless) {
  i64 o = x->m[c], top = o + x->size[c];
  int mark = x->trail_top, lo = x->s0[c], hi = x->s1[c], st = NOT_FOUND;
  x->placed[c] = 1;
  for (int j = x->nb_start[c]; j < x->nb_start[c + 1]; ++j) {
    int d = x->nb[j];
    if (x->placed[d] || x->m[d] >= top) continue;
    x->trail_idx[x->trail_top] = d; x->trail_val[x->trail_top++] = x->m[d];
    x->m[d] = lift(x, d, top);
    if (x->s0[d] < lo) lo = x->s0[d];
    if (x->s1[d] > hi) hi = x->s1[d];
  }
  for (int s = x->s0[c]; s < x->s1[c]; ++s) {
    x->trail_idx[x->trail_top] = -1 - s; x->trail_val[x->trail_top++] = x->floor[s];
    x->floor[s] = top;
    x->total[s] -= x->size[c];
  }
  *hatless = x->trail_top == mark + x->s1[c] - x->s0[c];
  if (check(x, a, b, o, lo, hi)) {
    if (x->flags & F_DECOMPOSE) {
      /* Boundaries inside c that no unplaced buffer crosses any more split the scope. */
      int start = a, split = 0;
      for (int k = x->s0[c] + 1; k < x->s1[c]; ++k) --x->cuts[k];
      st = FOUND;
      for (int k = x->s0[c] + 1; k < x->s1[c] && st == FOUND; ++k)
        if (x->cuts[k] == 0) { st = solve_part(x, start, k, o); start = k; split = 1; }
      if (!split) st = search(x, a, b, o, x->rank[c]);
      else if (st == FOUND) st = solve_part(x, start, b, o);
      for (int k = x->s0[c] + 1; k < x->s1[c]; ++k) ++x->cuts[k];
    } else {
      st = search(x, a, b, o, x->rank[c]);
    }
  }
  for (int s = x->s0[c]; s < x->s1[c]; ++s) x->total[s] += x->size[c];
  while (x->trail_top > mark) {
    int i = x->trail_idx[--x->trail_top];
    if (i >= 0) x->m[i] = x->trail_val[x->trail_top]; else x->floor[-1 - i] = x->trail_val[x->trail_top];
  }
  x->placed[c] = 0;
  if (st == FOUND) x->sol[c] = o;
  return st;
}

/* Finds offsets for the unplaced buffers that live inside sections [a, b), placing them
 * in (offset, rank) order after (last, last_rank). */
static int search(Ctx *x, int a, int b, i64 last, int last_rank) {
  if (++x->nodes > x->node_limit) return NODE_LIMIT;
  if ((x->nodes & 1023) == 0 && now() > x->deadline) return TIMEOUT;
  int canon = x->flags & F_CANONICAL, dom = canon && (x->flags & F_DOMINANCE), n = x->n;
  i64 min_height = INT64_MAX;
  int any = 0;
  for (int c = 0; c < n; ++c) {
    if (x->placed[c] || x->s0[c] < a || x->s1[c] > b) continue;
    any = 1;
    if (x->m[c] + x->size[c] < min_height) min_height = x->m[c] + x->size[c];
  }
  if (!any) return FOUND;
  /* Dominance: an unplaced buffer that fits wholly below `last` could drop there. */
  if (dom && min_height <= last) { ++x->backtracks; return NOT_FOUND; }
  int base = x->cand_top;
  if (x->cand_cap - base < n) {
    int cap = 2 * x->cand_cap + n;
    i64 *p = realloc(x->cand, sizeof(i64) * cap);
    if (!p) return NO_MEMORY;
    x->cand = p; x->cand_cap = cap;
  }
  for (int c = 0; c < n; ++c) {
    if (x->placed[c] || x->s0[c] < a || x->s1[c] > b) continue;
    i64 m = x->m[c];
    if (m + x->size[c] > x->cap) continue;
    if (dom && m >= min_height) continue;
    if (canon && (m < last || (m == last && x->rank[c] < last_rank))) continue;
    if ((x->flags & F_SYMMETRY) && x->twin[c] >= 0 && !x->placed[x->twin[c]]) continue;
    x->cand[x->cand_top++] = ((x->flags & F_DYNAMIC_ORDER) ? m * n : 0) + x->rank[c];
  }
  int end = x->cand_top;
  qsort(x->cand + base, end - base, sizeof(i64), cmp_i64);
  int st = NOT_FOUND;
  for (int i = base, hatless = 0; i < end && st == NOT_FOUND; ++i) {
    st = branch(x, a, b, x->by_rank[x->cand[i] % n], &hatless);
    /* A failed buffer that raised nobody could be moved first in any other branch. */
    if (hatless && canon && (x->flags & F_DYNAMIC_ORDER) && (x->flags & F_HATLESS)) break;
  }
  x->cand_top = base;
  if (st == NOT_FOUND) ++x->backtracks;
  return st;
}

/* Entry point (ctypes). Returns FOUND with offsets in sol, NOT_FOUND when proven
 * infeasible, NODE_LIMIT, TIMEOUT or NO_MEMORY. stats[0] = nodes, stats[1] = backtracks. */
int alloc_search(int n, int S, i64 cap, int flags, const i64 *size, const i64 *align,
                 const i64 *width, const int *s0, const int *s1, const int *heur, int nheur, const int *twin,
                 const int *nb_start, const int *nb, const int *sb_start, const int *sb,
                 const int *fx_start, const i64 *fx_lo, const i64 *fx_hi,
                 i64 node_limit, double seconds, i64 *sol, i64 *stats) {
  Ctx x = {n, S, flags, cap, size, align, width, s0, s1, twin, heur, nheur, nb_start, nb, sb_start, sb,
           fx_start, fx_lo, fx_hi};
  int trail = nb_start[n] + sb_start[S] + 1;
  x.m = calloc(n + 1, sizeof(i64)); x.floor = calloc(S + 1, sizeof(i64));
  x.total = calloc(S + 1, sizeof(i64)); x.placed = calloc(n + 1, 1);
  x.cuts = calloc(S + 1, sizeof(int)); x.by_rank = calloc(n + 1, sizeof(int)); x.rank = calloc(n + 1, sizeof(int)); x.sol = sol;
  x.trail_idx = malloc(sizeof(int) * trail); x.trail_val = malloc(sizeof(i64) * trail);
  x.node_limit = node_limit; x.deadline = now() + seconds;
  int st = NO_MEMORY;
  if (x.m && x.floor && x.total && x.placed && x.cuts && x.by_rank && x.rank && x.trail_idx && x.trail_val) {
    for (int c = 0; c < n; ++c) {
      x.rank[c] = x.by_rank[c] = c;
      x.m[c] = lift(&x, c, 0);
      for (int s = s0[c]; s < s1[c]; ++s) x.total[s] += size[c];
      for (int k = s0[c] + 1; k < s1[c]; ++k) ++x.cuts[k];
    }
    st = FOUND;
    if (!check(&x, 0, S, 0, 0, S)) { st = NOT_FOUND; x.backtracks = 1; }
    int start = 0;
    if (flags & F_DECOMPOSE)
      for (int k = 1; k < S && st == FOUND; ++k)
        if (x.cuts[k] == 0) { st = solve_part(&x, start, k, 0); start = k; }
    if (st == FOUND) st = solve_part(&x, start, S, 0);
  }
  stats[0] = x.nodes; stats[1] = x.backtracks;
  free(x.m); free(x.floor); free(x.total); free(x.placed); free(x.cuts); free(x.by_rank); free(x.rank);
  free(x.trail_idx); free(x.trail_val); free(x.cand);
  return st;
}

/* A module object only so that setuptools can build this file as an extension; Python
 * calls alloc_search through ctypes. */
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_alloc_search", NULL, -1, NULL};
PyMODINIT_FUNC PyInit__alloc_search(void) { return PyModule_Create(&module); }
