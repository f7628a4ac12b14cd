"""A pip user's path: install (not editable), `gunicorn-graceful init`, start, check status."""

import contextlib
import os
import shutil
import signal
import subprocess
import sys

import pytest

from tests.harness import ROOT, cli, wait_for

TEMPLATES = {"conf/graceful.py": "graceful.py", "conf/graceful_asgi.py": "graceful_asgi.py",
             "conf/systemd/myapp.service": "myapp.service",
             "conf/systemd/myapp-inplace.service": "myapp-inplace.service",
             "conf/kubernetes/deployment.yaml": "deployment.yaml",
             "conf/haproxy/haproxy.cfg": "haproxy.cfg", "conf/ansible/deploy.yml": "deploy.yml"}
APP = '''def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello from a pip install\\n"]
'''


@pytest.mark.parametrize("repo_path, name", sorted(TEMPLATES.items()))
def test_the_repository_conf_files_are_the_packaged_templates(repo_path, name):
    with open(os.path.join(ROOT, repo_path)) as repo, \
            open(os.path.join(ROOT, "gunicorn_graceful", "templates", name)) as packaged:
        assert repo.read() == packaged.read()


def test_init_refuses_to_overwrite_without_force(tmp_path):
    first = cli("init", str(tmp_path), "--haproxy", "--ansible")
    assert first.returncode == 0 and "wrote %s" % (tmp_path / "haproxy.cfg") in first.stdout
    assert "wrote %s" % (tmp_path / "deploy.yml") in first.stdout
    again = cli("init", str(tmp_path))
    assert again.returncode == 2 and "already exists (--force overwrites)" in again.stderr
    assert cli("init", str(tmp_path), "--force").returncode == 0


@pytest.mark.parametrize("force", [False, True], ids=["", "force"])
def test_init_never_follows_a_link_nor_writes_outside_dir(tmp_path, force):
    """Before: a dangling symlink named like a template was followed (the file was created
    where it pointed), and a DIR that is a file was a traceback."""
    target = tmp_path / "outside.py"
    (tmp_path / "dir").mkdir()
    os.symlink(target, tmp_path / "dir" / "graceful.py")
    linked = cli("init", str(tmp_path / "dir"), *(["--force"] if force else []))
    assert linked.returncode == 2 and linked.stdout == ""
    assert linked.stderr == "not written: %s is a symbolic link (init never follows one)\n" % (
        tmp_path / "dir" / "graceful.py")
    assert not target.exists()
    (tmp_path / "file").write_text("x")
    on_file = cli("init", str(tmp_path / "file"))
    assert on_file.returncode == 2 and "Traceback" not in on_file.stderr
    assert on_file.stderr == "not written: %s is not a directory\n" % (tmp_path / "file")


def test_init_asgi_writes_the_asgi_config(tmp_path):
    written = cli("init", str(tmp_path), "--asgi")
    assert written.returncode == 0, written.stderr
    assert "next: gunicorn -c %s yourapp:app" % (tmp_path / "graceful_asgi.py") in written.stdout
    assert "GracefulASGIWorker" in (tmp_path / "graceful_asgi.py").read_text()


def test_pip_install_then_init_then_gunicorn_serves(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # From a copy of the tracked files, as a downloaded sdist would be: pip builds in the
    # source tree, where tests/run.sh may be installing the older lines' venvs meanwhile.
    source = tmp_path / "source"
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True, timeout=60).stdout.split()
    for name in tracked:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.join(ROOT, name), source / name, follow_symlinks=False)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                          "--disable-pip-version-check", str(source)],
                         capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-2000:]
    site = tmp_path / "site"
    init = subprocess.run([str(venv / "bin" / "gunicorn-graceful"), "init", str(site)],
                          capture_output=True, text=True, timeout=60)
    assert init.returncode == 0, init.stderr
    assert "next: gunicorn -c %s yourapp:app" % (site / "graceful.py") in init.stdout
    (site / "app.py").write_text(APP)
    with gunicorn_in(site, tmp_path / "gunicorn.log", str(venv / "bin" / "gunicorn"),
                     "app:app") as (proc, text):
        wait_for(lambda: "event=master.serving" in text(), 30, lambda: text()[-3000:])
        shown = subprocess.run([str(venv / "bin" / "gunicorn-graceful"), "status", "--pidfile",
                                str(site / "gunicorn.pid")], capture_output=True, text=True,
                               timeout=30)
        assert shown.returncode == 0 and "state=serving" in shown.stdout, shown.stdout
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0


@contextlib.contextmanager
def gunicorn_in(site, log_path, gunicorn, *app):
    """`gunicorn -c graceful.py APP` started in `site`, logging to `log_path`: (the process,
    a function returning its log so far); its process group is killed at the end."""
    log = open(log_path, "wb")
    proc = subprocess.Popen([gunicorn, "-c", "graceful.py", "-b", "127.0.0.1:0", *app],
                            cwd=str(site), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        yield proc, lambda: log_path.read_text(errors="replace")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
        log.close()


@pytest.mark.parametrize("project", ["django", "flask example"])
def test_a_newcomers_app_starts_reloads_and_stops_under_the_template(tmp_path, project):
    """`init`, then the app a newcomer has: a fresh Django project (no health route) or the
    README's Flask example; start, HUP, TERM, all clean."""
    site = tmp_path / "site"
    init = cli("init", str(site))
    assert init.returncode == 0, init.stderr
    if project == "django":
        made = subprocess.run([sys.executable, "-m", "django", "startproject", "mysite",
                               str(site)], capture_output=True, text=True, timeout=60)
        assert made.returncode == 0, made.stderr
        app = ["mysite.wsgi:application"]
    else:
        app = ["--pythonpath", ROOT, "examples.flask_app:app"]
    gunicorn = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    with gunicorn_in(site, tmp_path / "gunicorn.log", gunicorn, *app) as (proc, text):
        wait_for(lambda: "event=master.serving" in text(), 30, lambda: text()[-3000:])
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "event=reload.done generation=2" in text(), 30, lambda: text()[-3000:])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0
    assert "[ERROR]" not in text() and "Traceback" not in text(), text()[-3000:]
