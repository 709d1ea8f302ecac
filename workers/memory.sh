# Sourced by every worker profile: how a worker process allocates memory.
#
# LanceDB (Rust) allocates and frees heavily from its own runtime threads besides the pool's.
# glibc malloc keeps what they free scattered over per-thread arenas, so a worker's RSS keeps
# growing while its Python heap stays flat (tracemalloc: 6.6 MB throughout). Measured on a
# RunStore taking 40k rows from 16 threads: glibc +7 MB per 1k rows with MALLOC_ARENA_MAX=2,
# jemalloc +2.3 MB per 1k rows. So: jemalloc when the system has it (Debian/Ubuntu package
# libjemalloc2; the Docker image installs it) unless LD_PRELOAD is already set, and at most
# two glibc arenas either way. OSIRIS_JEMALLOC=0 turns the preload off.
#
# pyarrow allocates from its own mimalloc pool by default, which the preload does not replace
# and which kept 57 -> 94 MB of freed memory over 24k rows (live Arrow data: ~0.1 MB); the
# system pool sends pyarrow's allocations to malloc (jemalloc when preloaded): 60-90 MB less,
# and with per-table maintenance (store.py) RSS stayed within 284-322 MB from 10k to 40k rows.
export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-2}"
export ARROW_DEFAULT_MEMORY_POOL="${ARROW_DEFAULT_MEMORY_POOL:-system}"
if [ -z "${LD_PRELOAD:-}" ] && [ "${OSIRIS_JEMALLOC:-1}" != 0 ]; then
  for lib in /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 /usr/lib/aarch64-linux-gnu/libjemalloc.so.2 \
             /usr/lib64/libjemalloc.so.2 /usr/lib/libjemalloc.so.2; do
    if [ -r "$lib" ]; then
      export LD_PRELOAD="$lib"
      break
    fi
  done
fi
