"""mutmut runner: python3 client.py SOCKET pytest-args... (runs them in the fork server; exits with pytest's code).

mutmut 2.5.1 counts a mutant as killed only when the runner exits 1, so pytest's 2 (a collection error: the mutant
made the module fail to import, e.g. `{*d, **e}`) and 3 (an internal error) are reported as 1. 4 and 5 (bad
arguments, no test selected) stay: they show up as survivors, i.e. as a broken selection, not as kills."""
import json, os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.sendall((json.dumps({"cwd": os.getcwd(), "args": sys.argv[2:], "log": os.environ.get("MUT_LOG", "/dev/null")}) + "\n").encode())
rc = int(s.makefile().readline())
sys.exit(1 if rc in (2, 3) else rc)
