"""What every command does with its user's errors and its output (butd.cli)."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_closed_pipe_ends_the_command_quietly():
    program = "import sys; from butd.cli import run; sys.exit(run(lambda argv: [print(i) for i in range(10**6)]))"
    proc = subprocess.Popen([sys.executable, "-c", program], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "0\n"
    proc.stdout.close()                      # as `| head -1` does
    err = proc.stderr.read()
    assert proc.wait() == 141 and err == ""
