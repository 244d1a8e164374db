"""`aegpo inspect …`: diagnostics of checkpoints and runs that published tables quote (not benchmarks: nothing
here is timed)."""
