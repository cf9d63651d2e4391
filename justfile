# Syncra tasks. Each recipe calls the same xtask as the cargo aliases, so `just` is optional.

# headless server: `just run-server --worlds 4`
run-server *ARGS:
    cargo run-server {{ARGS}}

# desktop preset: window, renderer, audio, input, one world
run-desktop *ARGS:
    cargo run-desktop {{ARGS}}

# every test, installing the system packages they need
test *ARGS:
    cargo test-all {{ARGS}}

# the benchmark table (release build); see BENCHMARKS.md
bench *ARGS:
    cargo bench-all {{ARGS}}

# a minute of random SIGKILL and SIGSTOP across 8 worlds, and the invariants after it
chaos *ARGS:
    cargo chaos {{ARGS}}

# every fuzz target for a bounded time (default 60 s each; `just fuzz --seconds 300`)
fuzz *ARGS:
    cargo fuzz-all {{ARGS}}

# the embedding example: a host application driving the supervisor
embed:
    cargo build -p syncra-world
    cargo run -p syncra-runtime --example embed

# validate a config and print what would start
check-config *ARGS:
    cargo run -q -p syncra-runtime --bin syncra -- check-config {{ARGS}}
