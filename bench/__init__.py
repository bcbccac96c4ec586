"""fastmaml's benchmarks: one script per question, results in bench/results/*.json, README tables
made from the JSON (bench/tables.py). `python -m bench` runs them all (bench/README.md)."""
