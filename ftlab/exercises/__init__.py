"""Course tooling: exercise self-checks, exercise notebooks generated from solutions, class
grading, and the notebooks' generated badges and setup cells."""
