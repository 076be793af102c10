"""Does an error raised in C++ (TORCH_CHECK) reach Python as a RuntimeError on this machine, or crash it?

On one GPU machine, wtext's argument errors killed the interpreter (SIGSEGV) instead of raising. This builds a
tiny op that always fails, once per compiler setting, loads each in a fresh process and reports which settings
raise cleanly, so the build can use one that does:

    python benchmarks/probe_exceptions.py
"""

import os
import subprocess
import sys
import tempfile
import textwrap

SOURCE = textwrap.dedent("""
    #include <ATen/ATen.h>
    #include <torch/library.h>
    at::Tensor always_fail(const at::Tensor& x, double value) {
      TORCH_CHECK(value > 0, "probe: value must be > 0; got value=", value);
      return x;
    }
    TORCH_LIBRARY(NAMESPACE, m) { m.def("fail(Tensor x, float value) -> Tensor"); }
    TORCH_LIBRARY_IMPL(NAMESPACE, CPU, m) { m.impl("fail", &always_fail); }
""")

CHILD = textwrap.dedent("""
    import os, sys, torch
    from torch.utils.cpp_extension import load_inline
    name, flags, ldflags = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
    load_inline(name=name, cpp_sources=sys.stdin.read().replace("NAMESPACE", name), extra_cflags=flags,
                extra_ldflags=ldflags, is_python_module=False, build_directory=sys.argv[4], verbose=False)
    try:
        getattr(torch.ops, name).fail(torch.ones(1), -1.0)
        print("no error raised")
    except RuntimeError as error:
        print("raised RuntimeError:", str(error).splitlines()[0][:80])
""")

# name: (extra compiler flags, extra linker flags, environment overrides)
VARIANTS = {
    "plain": ("-O2", "", {}),
    "wtext_flags": ("-O3 -fopenmp", "-fopenmp", {}),
    "abi_1": ("-D_GLIBCXX_USE_CXX11_ABI=1", "", {}),
    "static_libstdcxx": ("-O2", "-static-libstdc++ -static-libgcc", {}),
    "system_gxx": ("-O2", "", {"CXX": "/usr/bin/g++"}),
}


def main():
    processes = {}
    for name, (flags, ldflags, env_extra) in VARIANTS.items():
        if "CXX" in env_extra and not os.path.exists(env_extra["CXX"]):
            print(f"{name:<14} skipped: {env_extra['CXX']} does not exist")
            continue
        build_dir = tempfile.mkdtemp(prefix=f"probe_{name}_")
        env = {**os.environ, **env_extra}
        processes[name] = subprocess.Popen([sys.executable, "-c", CHILD, f"probe_{name}", flags, ldflags or " ", build_dir],
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                           text=True, env=env)
        processes[name].stdin.write(SOURCE)
        processes[name].stdin.close()
    for name, process in processes.items():
        output = process.stdout.read()
        code = process.wait()
        verdict = output.strip().splitlines()[-1] if code == 0 else f"CRASHED (exit {code}): {output.strip()[-300:]}"
        print(f"{name:<14} {verdict}")


if __name__ == "__main__":
    main()
