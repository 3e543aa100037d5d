# SPDX-License-Identifier: LGPL-2.1-or-later
"""The README's GitHub Actions and GitLab CI snippets run: their commands
are taken out of the YAML and run with bash, in order, in a scratch
repository laid out as the snippets assume (``ci/images.toml``, which is
the example of docs/ci.md taken verbatim, the images it names, the CI's
secret), with ``pyqcrypt`` on PATH being the pyqcrypt under test.  The
install step cannot run here (it installs the release's .debs, which
ci/package's autopkgtest installs and tests); it is checked for naming the
files a release builds.  Then one image is damaged and the same steps must
fail, with the failure in verify's JUnit report."""

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from conftest import cs_format, tool
from test_readme import _path_with_pyqcrypt, _readme, debian_package_version, shell_blocks

pytestmark = pytest.mark.interop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PASSPHRASE = b"images main key"


def yaml_blocks(text):
    return re.findall(r"^```yaml\n(.*?)^```", text, re.S | re.M)


def github_steps(block):
    """The shell commands of a GitHub Actions job, one string per ``run``."""
    steps, lines = [], block.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)(?:- )?run: (.*)$", line)
        if not m:
            continue
        if m.group(2).strip() != "|":
            steps.append(m.group(2))
            continue
        indent = len(m.group(1)) + 2
        body = []
        for follow in lines[i + 1:]:
            if follow.strip() and len(follow) - len(follow.lstrip()) < indent:
                break
            body.append(follow[indent:])
        steps.append("\n".join(body).strip("\n"))
    return steps


def gitlab_steps(block):
    """The shell commands of a GitLab CI job's ``script`` list."""
    steps, inside = [], False
    for line in block.splitlines():
        if re.match(r"^\s*script:\s*$", line):
            inside = True
            continue
        if inside:
            m = re.match(r"^\s*- (.*)$", line)
            if not m:
                break
            steps.append(m.group(1))
    return steps


def _snippets():
    blocks = yaml_blocks(_readme())
    github = [b for b in blocks if "runs-on:" in b]
    gitlab = [b for b in blocks if "script:" in b]
    assert len(github) == 1 and len(gitlab) == 1, "one GitHub and one GitLab snippet in the README"
    return {"github": github_steps(github[0]), "gitlab": gitlab_steps(gitlab[0])}


def _checks_file():
    with open(os.path.join(ROOT, "docs", "ci.md"), encoding="utf-8") as fh:
        blocks = re.findall(r"^```toml\n(.*?)^```", fh.read(), re.S | re.M)
    assert len(blocks) == 1, "docs/ci.md holds the example checks file"
    return blocks[0]


def _repository(workdir):
    """A scratch repository as the snippets expect it: a LUKS1 volume made
    by cryptsetup, its keep-ciphertext qcow2-luks conversion, the checks
    file, and the key file the CI's secret provides."""
    repo = os.path.join(workdir, "repo")
    for sub in ("ci", "images", "keys"):
        os.makedirs(os.path.join(repo, sub))
    images = os.path.join(repo, "images")
    cs_format(images, "vol.luks", PASSPHRASE, size=6 << 20)
    with open(os.path.join(images, "vol.luks"), "r+b") as fh:     # payload bytes worth comparing
        fh.seek(4 << 20)
        fh.write(os.urandom(64 << 10))
    subprocess.run([sys.executable, "-m", "pyqcrypt", "convert", "--keep-ciphertext", "-O", "qcow2",
                    os.path.join(images, "vol.luks"), os.path.join(images, "kept.qcow2")],
                   check=True, capture_output=True)
    with open(os.path.join(repo, "ci", "images.toml"), "w") as fh:
        fh.write(_checks_file())
    secret = os.path.join(workdir, "ci-secret.key")       # outside the repository, as a CI secret is
    with open(secret, "wb") as fh:
        fh.write(PASSPHRASE)
    return repo, secret


def _run(steps, repo, env):
    """Run *steps* in order; the install step is checked, not run."""
    for step in steps:
        if "apt-get install" in step:
            continue
        run = subprocess.run(["bash", "-euo", "pipefail", "-c", step], cwd=repo, env=env,
                             capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)
        if run.returncode:
            return step, run
    return None, None


def _env(workdir, flavour, secret):
    env = dict(os.environ, PATH=_path_with_pyqcrypt(workdir), HOME=workdir)
    runner_temp = os.path.join(workdir, "runner-temp")
    os.makedirs(runner_temp, exist_ok=True)
    if flavour == "github":        # a secret reaches the step as an environment variable
        env.update(RUNNER_TEMP=runner_temp, IMAGES_KEY=PASSPHRASE.decode())
    else:                          # a GitLab variable of type File is the path of a file
        env.update(IMAGES_KEY=secret)
    return env


def test_install_steps_name_the_release_packages():
    version = __import__("pyqcrypt").__version__
    debian_version = debian_package_version()
    assert version in debian_version
    for flavour, steps in _snippets().items():
        install = [s for s in steps if "apt-get install" in s]
        assert len(install) == 1, flavour
        assert "./packages/python3-pyqcrypt_%s_amd64.deb" % debian_version in install[0]
        assert "./packages/pyqcrypt_%s_all.deb" % debian_version in install[0]
        assert any(s.startswith("pyqcrypt selftest") for s in steps), flavour
        assert any("pyqcrypt verify" in s for s in steps), flavour
    # the README's own install block names the same files
    assert any("python3-pyqcrypt_%s_amd64.deb" % debian_version in b for b in shell_blocks(_readme()))


@pytest.mark.skipif(sys.version_info < (3, 11), reason="TOML checks files need Python 3.11 (tomllib)")
@pytest.mark.parametrize("flavour", ["github", "gitlab"])
def test_snippet_runs_and_fails_on_a_damaged_image(workdir, flavour):
    tool("qemu-img")
    steps = _snippets()[flavour]
    repo, secret = _repository(workdir)
    env = _env(workdir, flavour, secret)
    step, run = _run(steps, repo, env)
    assert step is None, "%s step failed (exit %d): %s\n%s%s" % (flavour, run.returncode, step,
                                                                run.stdout, run.stderr)
    for report in ("selftest.xml", "verify.xml"):
        suite = ET.parse(os.path.join(repo, report)).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        assert int(suite.get("failures")) == 0 and int(suite.get("tests")) >= 4, report
    assert PASSPHRASE.decode() not in open(os.path.join(repo, "verify.xml")).read()

    with open(os.path.join(repo, "images", "kept.qcow2.data"), "r+b") as fh:   # one flipped byte
        fh.seek(3 << 20)
        byte = fh.read(1)
        fh.seek(3 << 20)
        fh.write(bytes([byte[0] ^ 1]))
    verify = [s for s in steps if "pyqcrypt verify" in s]
    step, run = _run(verify, repo, env)
    assert step is not None and run.returncode == 1, "verify passed a damaged image"
    suite = ET.parse(os.path.join(repo, "verify.xml")).getroot()
    failed = [case.get("classname") for case in suite.iter("testcase") if case.find("failure") is not None]
    assert sorted(failed) == ["same-ciphertext", "same-data"], failed
