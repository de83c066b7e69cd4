"""mutmut runner: python3 mutclient.py SOCKET pytest-args... (runs them in the fork server; exits with pytest's code)."""
import json, os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.sendall((json.dumps({"cwd": os.getcwd(), "args": sys.argv[2:], "log": os.environ.get("MUT_LOG", "/dev/null")}) + "\n").encode())
sys.exit(int(s.makefile().readline()))
