"""Builds the compiled core `fastmaml._C` from csrc/.

Environment:
  FASTMAML_NO_EXT=1        build nothing; fastmaml runs on its pure-PyTorch backends.
  FASTMAML_REQUIRE_CUDA=1  a CUDA part that cannot be built is an error (CI sets it).
  FASTMAML_NO_CUDA=1       build the CPU kernels only, even where the CUDA ones could be built.
  TORCH_CUDA_ARCH_LIST     CUDA architectures, default "8.0;9.0" (sm_80, sm_90).
  CUDA_HOME                CUDA toolkit root; found from `nvcc --dryrun` when unset.
"""

import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import setup


def _flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _cuda_home():
    """The real toolkit root. The nvcc on PATH may be a wrapper script, so torch's guess from
    its location can be wrong; `nvcc --dryrun` prints the root it really uses as `TOP=`."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    try:
        out = subprocess.run([nvcc, "--dryrun", "x.cu"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"TOP=(\S+)", out.stdout + out.stderr)
    return os.path.realpath(match.group(1)) if match else None


def _cuda_problem(torch):
    """Why the CUDA sources cannot be built here, or None when they can."""
    if _flag("FASTMAML_NO_CUDA"):
        return "FASTMAML_NO_CUDA=1"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    home = _cuda_home()
    if home is None or not os.path.exists(os.path.join(home, "bin", "nvcc")):
        return "no CUDA toolkit found (nvcc not on PATH and CUDA_HOME unset)"
    os.environ["CUDA_HOME"] = home
    return None


def _extensions():
    if _flag("FASTMAML_NO_EXT"):
        print("fastmaml: FASTMAML_NO_EXT=1, skipping the compiled core", file=sys.stderr)
        return [], {}
    import torch

    problem = _cuda_problem(torch)  # sets CUDA_HOME before cpp_extension reads it
    from torch.utils import cpp_extension

    root = os.path.dirname(os.path.abspath(__file__))
    rel = lambda paths: sorted(os.path.relpath(p, root) for p in paths)  # noqa: E731
    sources = rel(glob.glob(os.path.join(root, "csrc", "*.cpp")))
    sources += rel(glob.glob(os.path.join(root, "csrc", "autograd", "*.cpp")))
    sources += rel(glob.glob(os.path.join(root, "csrc", "cpu", "*.cpp")))
    cuda_sources = rel(glob.glob(os.path.join(root, "csrc", "cuda", "*.cu")))
    include_dirs = [os.path.join(root, "csrc", "include")]
    # -fno-math-errno: sqrt may vectorise (NOTE: [cpu moment forms]); nothing here reads errno
    cxx = ["-O3", "-fno-math-errno", "-std=c++20", "-DPy_LIMITED_API=0x03090000"]
    if problem and cuda_sources:
        if _flag("FASTMAML_REQUIRE_CUDA"):
            raise RuntimeError(f"FASTMAML_REQUIRE_CUDA=1 but the CUDA kernels cannot be built: {problem}")
        print(f"fastmaml: building the CPU kernels only ({problem})", file=sys.stderr)
    if problem or not cuda_sources:
        ext = cpp_extension.CppExtension(
            "fastmaml._C", sources, include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx}, py_limited_api=True,
        )
    else:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        # The toolkit may lack headers (cusparse.h) that torch's pip CUDA packages ship.
        site = os.path.dirname(os.path.dirname(torch.__file__))
        include_dirs += [d for d in glob.glob(os.path.join(site, "nvidia", "cu*", "include"))]
        ext = cpp_extension.CUDAExtension(
            "fastmaml._C", sources + cuda_sources, include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx + ["-DFASTMAML_WITH_CUDA"],
                                "nvcc": ["-O3", "-std=c++20", "-DFASTMAML_WITH_CUDA",
                                         "--expt-relaxed-constexpr"]},
            py_limited_api=True,
        )
    build_ext = cpp_extension.BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)
    return [ext], {"build_ext": build_ext}


ext_modules, cmdclass = _extensions()
setup(
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    options={"bdist_wheel": {"py_limited_api": "cp39"}} if ext_modules else {},
)
