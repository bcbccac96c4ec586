"""The prepared GPU run of issue 17 (bench/gpu/README.md): build, CUDA tests, fused-update and
meta-step timings on one device, in one command with per-section time budgets; `--cpu-dry-run`
runs the same code at tiny sizes on the CPU so that it cannot rot between device sessions."""
