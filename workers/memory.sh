# Sourced by every worker profile: how a worker process allocates memory.
#
# LanceDB (Rust) allocates and frees heavily from its own runtime threads besides the pool's.
# glibc malloc keeps what they free scattered over per-thread arenas, so a worker's RSS keeps
# growing while its Python heap stays flat (tracemalloc: 6.6 MB throughout). Measured on a
# RunStore taking 40k rows from 16 threads: glibc +7 MB per 1k rows with MALLOC_ARENA_MAX=2,
# jemalloc +2.3 MB per 1k rows. So: jemalloc when the system has it (Debian/Ubuntu package
# libjemalloc2; the Docker image installs it) unless LD_PRELOAD is already set, and at most
# two glibc arenas either way. OSIRIS_JEMALLOC=0 turns the preload off.
export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-2}"
if [ -z "${LD_PRELOAD:-}" ] && [ "${OSIRIS_JEMALLOC:-1}" != 0 ]; then
  for lib in /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 /usr/lib/aarch64-linux-gnu/libjemalloc.so.2 \
             /usr/lib64/libjemalloc.so.2 /usr/lib/libjemalloc.so.2; do
    if [ -r "$lib" ]; then
      export LD_PRELOAD="$lib"
      break
    fi
  done
fi
