@echo off
rem Start the loratrainer GUI at http://127.0.0.1:7860 and open the browser.
rem The first run creates .venv and installs everything (a CUDA build of PyTorch when an NVIDIA GPU is present).
setlocal
cd /d "%~dp0"
set "PYTHON_BIN=python"
where py >nul 2>nul && set "PYTHON_BIN=py -3"
%PYTHON_BIN% scripts\bootstrap.py
if errorlevel 1 (
  echo Installation failed. Install Python 3.10 or newer from python.org and run gui.bat again.
  pause
  exit /b 1
)
".venv\Scripts\loratrainer.exe" gui %*
if errorlevel 1 pause
endlocal
