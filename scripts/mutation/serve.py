"""Fork server for mutmut's runner: third-party imports once, every test run in a fresh fork (our code imported
fresh from disk, no .pyc written). Request: JSON {"cwd": ..., "args": [...]} -> reply: exit code."""
import json, os, signal, socket, sys, time
os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
sys.dont_write_bytecode = True
import numpy, PIL.Image, pydantic, pytest, safetensors.torch, torch  # noqa
import diffusers, transformers, accelerate, peft  # noqa
import diffusers.training_utils, diffusers.optimization, transformers.optimization  # noqa
from diffusers import AutoencoderKL, DDPMScheduler, PNDMScheduler, UNet2DConditionModel, StableDiffusionPipeline  # noqa
from transformers import CLIPTextModel, CLIPTokenizer, CLIPTextConfig  # noqa
from accelerate import Accelerator  # noqa
path = sys.argv[1]
if os.path.exists(path):
    os.unlink(path)
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path); srv.listen(4)
print("ready", flush=True)
while True:
    conn, _ = srv.accept()
    req = json.loads(conn.makefile().readline())
    pid = os.fork()
    if pid == 0:
        srv.close()
        os.chdir(req["cwd"]); sys.path.insert(0, req["cwd"]); os.environ["PYTHONPATH"] = req["cwd"]
        fd = os.open(req.get("log", "/dev/null"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(fd, 1); os.dup2(fd, 2)
        torch.set_num_threads(1)
        rc = pytest.main(req["args"] + ["-p", "no:cacheprovider", "-q", "-x"])
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(int(rc))
    deadline = time.time() + req.get("timeout", 300)
    rc = None
    conn.setblocking(False)
    while time.time() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            rc = os.waitstatus_to_exitcode(status); break
        try:  # mutmut gave up on this mutant (its timeout) and killed the client: stop the test run too
            if conn.recv(1, socket.MSG_PEEK) == b"":
                break
        except BlockingIOError:
            pass
        time.sleep(0.05)
    if rc is None:
        os.kill(pid, signal.SIGKILL); os.waitpid(pid, 0); rc = 124
    try:
        conn.setblocking(True)
        conn.sendall(f"{rc}\n".encode())
    except OSError:
        pass  # the client was killed meanwhile
    conn.close()
