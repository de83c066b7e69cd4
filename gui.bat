@echo off
rem Start the loratrainer GUI at http://127.0.0.1:7860 and open the browser.
rem The first run creates .venv and installs everything (a CUDA build of PyTorch when an NVIDIA GPU is present).
rem Options go to `loratrainer gui`, e.g. gui.bat --port 7861 --language ko
rem This file keeps CRLF line endings (.gitattributes): cmd.exe misreads some LF-only batch files.
setlocal
rem pushd, not cd: it also works from a network share (\\server\share), where cd cannot go
pushd "%~dp0"
rem Python writes UTF-8 whatever the console code page, so a Korean or accented folder name never stops it
set "PYTHONUTF8=1"
rem The Python launcher first (py -3: the newest Python 3), then python on PATH; each must really be 3.10+.
rem "python" may be only the Microsoft Store's "install me" shortcut, which runs nothing: the check catches it.
set "PYTHON_BIN="
where py >nul 2>nul && py -3 -c "import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)" >nul 2>nul && set "PYTHON_BIN=py -3"
if not defined PYTHON_BIN python -c "import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)" >nul 2>nul && set "PYTHON_BIN=python"
if not defined PYTHON_BIN (
  echo No Python 3.10 or newer was found. Install it from https://www.python.org/downloads/
  echo ^(tick "Add python.exe to PATH"^) and run gui.bat again.
  pause
  popd
  exit /b 1
)
%PYTHON_BIN% scripts\bootstrap.py
if errorlevel 1 (
  echo Installation failed: see the messages above.
  pause
  popd
  exit /b 1
)
".venv\Scripts\loratrainer.exe" gui %*
if errorlevel 1 pause
popd
endlocal
