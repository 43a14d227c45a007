"""The hub's web page in a real headless Chromium (Debian's package), against a real
``leapcore-hub serve --web-listen`` and a real ``leapcore-worker``: sign in, an empty list,
mint a key in the "Register worker" panel, register a worker with the command the page
shows, and watch it come online and go offline — all without reloading the page.

With ``LEAPCORE_SCREENSHOT=PATH`` the page is also saved there (how
``docs/images/hub-web.png`` is made).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
from pathlib import Path

from support.cdp import browser, chromium_or_skip
from support.procs import Env, env_fixture
from support.secretlog import record_secret

__all__ = ["env_fixture"]

ROW = "document.querySelector('tr[data-name=\"web-box\"]')"


def test_sign_in_register_and_watch_a_worker_live(env: Env, tmp_path: Path) -> None:
    chromium_or_skip()
    env.hub_flags = ["--web-listen", "127.0.0.1:0"]
    hub = env.start_hub()
    web = hub.line("leapcore-hub web page on ").split()[-1]
    assert web.startswith("http://127.0.0.1:")
    with browser(tmp_path) as page:
        page.navigate(web + "/")
        page.wait("!document.getElementById('sign-in').hidden", "the sign-in form")

        # A wrong token is refused on the page, and never signs in.
        page.eval("document.getElementById('token').value = 'not-a-token'")
        page.eval("document.getElementById('sign-in-button').click()")
        page.wait("document.getElementById('sign-in-error').textContent", "the refusal")
        assert page.eval("document.getElementById('fleet').hidden") is True

        page.eval(f"document.getElementById('token').value = {json.dumps(env.token)}")
        page.eval("document.getElementById('sign-in-button').click()")
        page.wait("!document.getElementById('fleet').hidden", "the worker list")
        page.wait("!document.getElementById('empty').hidden", "the empty list")
        page.wait("document.getElementById('live').textContent === 'live'", "the event stream")
        # The session cookie is HttpOnly: the page's script cannot read it.
        assert "leapcore_session" not in page.eval("document.cookie")
        # Anything that reloads the page loses this mark.
        page.eval("window.stillTheSamePage = true")

        page.eval("document.getElementById('register').click()")
        command = page.wait("document.getElementById('command').textContent", "the command")
        words = shlex.split(command)
        assert words[:3] == ["leapcore-worker", "--hub", env.url], command
        assert words[3] == "--registration-key"
        key = record_secret(words[4])
        assert page.eval("document.getElementById('key-state').dataset.state") == "live"

        data = tmp_path / "web-box"
        worker = env.start(
            "web-box",
            *words[:3],
            "run",
            *words[3:5],
            "--data-dir",
            str(data),
            "--name",
            "web-box",
            "--encryption-mode",
            "classic",
            *env.client_flags(),
        )
        assert key not in " ".join(worker.popen.args[:3])
        page.wait(f"{ROW} && {ROW}.dataset.online === 'yes'", "web-box online", timeout=30)
        page.wait(f"{ROW}.querySelector('.fp').textContent.length > 8", "web-box's fingerprint")
        assert page.eval(f"{ROW}.querySelector('.dot').className") == "dot online"
        assert page.eval("document.getElementById('empty').hidden") is True
        page.wait(
            "document.getElementById('key-state').dataset.state === 'consumed'",
            "the panel to say the key was used",
        )
        shot = os.environ.get("LEAPCORE_SCREENSHOT")
        page.screenshot(tmp_path / "hub-web.png")
        if shot:
            shutil.copyfile(tmp_path / "hub-web.png", shot)
        assert (tmp_path / "hub-web.png").read_bytes().startswith(b"\x89PNG")

        worker.signal(signal.SIGTERM)
        worker.wait()
        page.wait(f"{ROW}.dataset.online === 'no'", "web-box offline", timeout=30)
        assert page.eval(f"{ROW}.querySelector('.dot').className") == "dot"
        assert page.eval("window.stillTheSamePage") is True

        # Closing the panel stops the key's keep-alive; signing out shows the form again.
        page.eval("document.getElementById('close-panel').click()")
        assert page.eval("document.getElementById('panel').hidden") is True
        page.eval("document.getElementById('sign-out').click()")
        page.wait("!document.getElementById('sign-in').hidden", "the sign-in form again")
    # The token never reached the hub's log.
    assert env.token not in hub.stderr()
