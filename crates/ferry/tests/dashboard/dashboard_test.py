#!/usr/bin/env python3
"""Real-browser test of the ferry web dashboard (headless Chromium through selenium).

Runs against a live `ferry up` demo (environments `staging` and `production`, three agents
each, one ingress configuration per environment already rolled out):

    python dashboard_test.py --url http://127.0.0.1:PORT --admin-token A --read-token R \
        --screenshots DIR --chromium /usr/bin/chromium --chromedriver /usr/bin/chromedriver

Exits 0 when every step passed; otherwise prints what was expected and what was seen, and
exits 1. Only selenium comes from outside the standard library.
"""

import argparse
import copy
import json
import os
import struct
import sys
import time
import traceback
import urllib.error
import urllib.request
import zlib
from collections import Counter
from pathlib import Path

# The distinct colours a screenshot of a rendered page must have at least, and the largest
# share one colour may cover: a blank or one-colour page fails.
MIN_COLOURS = 8
MAX_DOMINANT_SHARE = 0.99

FORBIDDEN_FOR_READERS = ('[data-testid="edit-button"], [data-testid="delete-button"], '
                         '[data-testid="new-config"], [data-testid^="rollback-"], '
                         '[data-testid="save"]')


class Failure(Exception):
    """A check that did not hold: the message says what was expected and what was seen."""


def expect(condition, message):
    if not condition:
        raise Failure(message)


def tid(name):
    return f'[data-testid="{name}"]'


# ------------------------------------------------------------------------------------ API


class Api:
    """The controller's JSON API over urllib, with one bearer token."""

    def __init__(self, base, token, timeout=20):
        self.base = base.rstrip('/')
        self.token = token
        self.timeout = timeout

    def call(self, method, path, body=None, if_match=None):
        """Returns (status, decoded JSON body or None, headers)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header('Authorization', f'Bearer {self.token}')
        req.add_header('Accept', 'application/json')
        if data is not None:
            req.add_header('Content-Type', 'application/json')
        if if_match is not None:
            req.add_header('If-Match', f'"{if_match}"')
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as res:
                status, raw, headers = res.status, res.read(), res.headers
        except urllib.error.HTTPError as e:
            status, raw, headers = e.code, e.read(), e.headers
        try:
            decoded = json.loads(raw) if raw else None
        except ValueError:
            decoded = raw.decode(errors='replace')
        return status, decoded, headers

    def ok(self, method, path, body=None, if_match=None, want=(200,)):
        status, decoded, headers = self.call(method, path, body, if_match)
        expect(status in want,
               f'API {method} {path}: expected HTTP {"/".join(map(str, want))}, got {status}: {decoded!r}')
        return decoded, headers

    def config(self, env, cid):
        """The current record and its version from the ETag."""
        rec, headers = self.ok('GET', f'/api/v1/environments/{env}/configs/{cid}')
        etag = (headers.get('ETag') or '').strip().removeprefix('W/').strip('"')
        expect(etag == str(rec['version']),
               f'ETag of {env}/{cid}: expected "{rec["version"]}", got {headers.get("ETag")!r}')
        return rec

    def put(self, env, cid, doc, version):
        rec, _ = self.ok('PUT', f'/api/v1/environments/{env}/configs/{cid}', doc, if_match=version)
        return rec

    def status(self, env, cid):
        return self.ok('GET', f'/api/v1/environments/{env}/configs/{cid}/status')[0]


def wait_api(what, probe, timeout):
    """Polls probe() -> (ok, seen) until ok, or fails after timeout seconds."""
    deadline = time.monotonic() + timeout
    seen = None
    while True:
        ok, seen = probe()
        if ok:
            return seen
        if time.monotonic() > deadline:
            raise Failure(f'timed out after {timeout:g} s waiting for {what}\n  last seen: {seen}')
        time.sleep(0.25)


# ------------------------------------------------------------------------------------ PNG


def decode_png(data):
    """Decodes an 8-bit, non-interlaced PNG: (width, height, bytes per pixel, rows)."""
    expect(data[:8] == b'\x89PNG\r\n\x1a\n', 'screenshot is not a PNG (bad signature)')
    pos = 8
    header = None
    idat = []
    while pos + 8 <= len(data):
        length, kind = struct.unpack('>I4s', data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b'IHDR':
            header = struct.unpack('>IIBBBBB', chunk)
        elif kind == b'IDAT':
            idat.append(chunk)
        elif kind == b'IEND':
            break
    expect(header is not None, 'screenshot PNG has no IHDR chunk')
    width, height, depth, colour, _compression, _filter, interlace = header
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour)
    expect(depth == 8 and channels is not None and interlace == 0,
           f'screenshot PNG format not handled: depth {depth}, colour type {colour}, interlace {interlace}')
    raw = zlib.decompress(b''.join(idat))
    bpp = channels
    stride = width * bpp
    expect(len(raw) >= height * (stride + 1),
           f'screenshot PNG data too short: {len(raw)} bytes for {width}x{height}')
    prev = bytearray(stride)
    rows = []
    at = 0
    for _ in range(height):
        kind = raw[at]
        line = bytearray(raw[at + 1:at + 1 + stride])
        at += 1 + stride
        if kind == 1:  # Sub
            for x in range(bpp, stride):
                line[x] = (line[x] + line[x - bpp]) & 0xFF
        elif kind == 2:  # Up
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prev))
        elif kind == 3:  # Average
            for x in range(stride):
                left = line[x - bpp] if x >= bpp else 0
                line[x] = (line[x] + ((left + prev[x]) >> 1)) & 0xFF
        elif kind == 4:  # Paeth
            for x in range(stride):
                a = line[x - bpp] if x >= bpp else 0
                b = prev[x]
                c = prev[x - bpp] if x >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[x] = (line[x] + pred) & 0xFF
        else:
            expect(kind == 0, f'screenshot PNG has unknown row filter {kind}')
        rows.append(bytes(line))
        prev = line
    return width, height, bpp, rows


def check_screenshot(png, name):
    """Fails unless the PNG shows more than a blank or one-colour page; returns a summary."""
    width, height, bpp, rows = decode_png(png)
    colours = Counter()
    for row in rows:
        colours.update(row[x:x + bpp] for x in range(0, len(row), bpp))
    total = width * height
    dominant = colours.most_common(1)[0][1] / total if total else 1.0
    expect(len(colours) >= MIN_COLOURS and dominant <= MAX_DOMINANT_SHARE,
           f'screenshot {name} looks blank: expected at least {MIN_COLOURS} colours with none covering '
           f'more than {MAX_DOMINANT_SHARE:.0%}, saw {len(colours)} colour(s), the commonest on '
           f'{dominant:.1%} of {width}x{height} pixels')
    return f'{width}x{height}, {len(colours)} colours, commonest {dominant:.0%}'


# ------------------------------------------------------------------------------------ the test


class DashboardTest:
    def __init__(self, args):
        self.args = args
        self.url = args.url.rstrip('/')
        self.admin = Api(self.url, args.admin_token)
        self.reader = Api(self.url, args.read_token)
        self.shots = Path(args.screenshots)
        self.timeout = args.timeout
        self.driver = None
        self.env = 'staging'
        self.cid = None
        self.original_doc = None
        self.step_no = -1  # the API preconditions are step 0; the browser steps 1 to 9

    # -------------------------------------------------------------- browser helpers

    def start_browser(self):
        os.environ['SE_OFFLINE'] = 'true'
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service

        options = Options()
        options.binary_location = self.args.chromium
        for flag in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage',
                     '--window-size=1280,900', '--no-first-run', '--no-default-browser-check',
                     '--disable-background-networking', '--disable-component-update',
                     '--disable-sync', '--disable-extensions', '--disable-default-apps',
                     '--disable-client-side-phishing-detection', '--metrics-recording-only',
                     '--password-store=basic', '--disable-features=Translate,MediaRouter,OptimizationHints'):
            options.add_argument(flag)
        options.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
        self.driver = webdriver.Chrome(service=Service(executable_path=self.args.chromedriver),
                                       options=options)
        self.driver.set_page_load_timeout(self.timeout)

    def find(self, css):
        from selenium.webdriver.common.by import By
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def wait(self, what, probe, timeout=None):
        """Waits until probe() -> (ok, seen) holds; fails naming what and the last seen value."""
        from selenium.common.exceptions import (NoSuchElementException,
                                                StaleElementReferenceException,
                                                TimeoutException)
        from selenium.webdriver.support.ui import WebDriverWait

        timeout = self.timeout if timeout is None else timeout
        last = {'seen': None}

        def condition(_driver):
            try:
                ok, seen = probe()
            except (StaleElementReferenceException, NoSuchElementException) as e:
                ok, seen = False, f'{type(e).__name__} (page changing)'
            last['seen'] = seen
            return ok

        try:
            WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(condition)
        except TimeoutException:
            raise Failure(f'timed out after {timeout:g} s waiting for {what}\n'
                          f'  last seen: {last["seen"]}\n  page: {self.page_summary()}') from None
        return last['seen']

    def wait_visible(self, css, what=None, timeout=None):
        def probe():
            shown = [e for e in self.find(css) if e.is_displayed()]
            return bool(shown), f'{len(shown)} visible {css}'
        self.wait(what or f'a visible {css}', probe, timeout)
        return [e for e in self.find(css) if e.is_displayed()][0]

    def click(self, css, what=None):
        element = self.wait_visible(css, what)
        element.click()

    def page_summary(self):
        try:
            return self.driver.execute_script(
                "const t = (s) => Array.from(document.querySelectorAll(s)).map((e) => e.textContent.trim()).join(' | ');"
                "return {hash: location.hash, errors: t('[data-testid=error]'),"
                " conflict: t('[data-testid=conflict]'), fieldErrors: t('[data-testid=field-error]'),"
                " heading: t('h1')};")
        except Exception as e:  # the page itself may be what broke
            return f'(page not readable: {e})'

    def cells(self):
        """The rollout cells as one snapshot: [{agent, state, version, message}]."""
        return self.driver.execute_script(
            "return Array.from(document.querySelectorAll('[data-testid=\"rollout-cell\"]')).map((c) => ({"
            " agent: c.dataset.agent, state: c.dataset.state, version: c.dataset.version,"
            " message: (c.querySelector('[data-testid=\"rollout-message\"]') || {}).textContent || ''}));")

    def wait_cells(self, what, agents, state, version=None, timeout=None, message_check=None):
        def probe():
            cells = self.cells()
            seen = sorted((c['agent'], c['state'], c['version']) for c in cells)
            ok = sorted(c['agent'] for c in cells) == sorted(agents) and all(
                c['state'] == state
                and (version is None or c['version'] == str(version))
                and (message_check is None or message_check(c['message']))
                for c in cells)
            if message_check is not None:
                seen = [(c['agent'], c['state'], c['version'], c['message']) for c in cells]
            return ok, seen
        return self.wait(what, probe, timeout)

    def set_textarea(self, element, text):
        self.driver.execute_script(
            "arguments[0].value = arguments[1];"
            "arguments[0].dispatchEvent(new Event('input', {bubbles: true}));", element, text)

    def screenshot(self, name):
        png = self.driver.get_screenshot_as_png()
        path = self.shots / name
        path.write_bytes(png)
        summary = check_screenshot(png, name)
        print(f'    screenshot {path} ({summary})', flush=True)

    def assert_no_write_controls(self, where):
        found = [(e.get_attribute('data-testid'), e.text) for e in self.find(FORBIDDEN_FOR_READERS)]
        expect(not found, f'read-only token on the {where}: expected no create/edit/delete/rollback/save '
                          f'controls at all, found {found}')

    def step(self, text):
        self.step_no += 1
        print(f'[{self.step_no}] {text}', flush=True)

    def login(self, token, role):
        self.wait_visible(tid('login-token'), 'the login form')
        field = self.find(tid('login-token'))[0]
        expect(field.get_attribute('type') == 'password',
               f'login token input: expected type=password, got {field.get_attribute("type")!r}')
        field.clear()
        field.send_keys(token)
        self.click(tid('login-submit'))

        def probe():
            el = self.find(tid('whoami'))
            if not el or not el[0].is_displayed():
                return False, 'no visible whoami'
            return el[0].get_attribute('data-role') == role and role in el[0].text, \
                f'whoami {el[0].text!r} (data-role={el[0].get_attribute("data-role")!r})'
        return self.wait(f'whoami to show the {role} role', probe)

    # -------------------------------------------------------------- preconditions over the API

    def ingress_config(self, api, env):
        configs, _ = api.ok('GET', f'/api/v1/environments/{env}/configs')
        live = [c for c in configs if not c.get('deleted')]
        hostname = f'shop.{env}.example'
        for c in live:
            doc = c.get('document') or {}
            if doc.get('kind') == 'ingress' and any(
                    v.get('hostname') == hostname for v in doc.get('virtual_hosts', [])):
                return c
        ingress = [c for c in live if (c.get('document') or {}).get('kind') == 'ingress']
        expect(ingress, f'{env}: expected an ingress configuration (hostname {hostname}), found {configs!r}')
        return ingress[0]

    def agents_of(self, env):
        envs, _ = self.admin.ok('GET', '/api/v1/environments')
        for e in envs:
            if e['env'] == env:
                return sorted(a['id'] for a in e['agents'])
        return []

    def preconditions(self):
        self.step('demo ready: both environments with three agents, configurations rolled out')

        def agents_probe():
            envs, _ = self.admin.ok('GET', '/api/v1/environments')
            counts = {e['env']: len(e.get('agents') or []) for e in envs}
            return counts.get('staging') == 3 and counts.get('production') == 3, counts
        wait_api('three live agents in staging and in production', agents_probe, self.timeout)

        for env in ('staging', 'production'):
            cid = self.ingress_config(self.admin, env)['id']

            def rollout_probe(env=env, cid=cid):
                s = self.status(env, cid)
                return bool(s.get('summary', {}).get('complete')), s.get('summary')
            wait_api(f'the rollout of {env}/{cid} to be complete', rollout_probe, self.timeout)

        rec = self.ingress_config(self.admin, self.env)
        self.cid = rec['id']
        self.original_doc = rec['document']

    def status(self, env, cid):
        return self.admin.status(env, cid)

    # -------------------------------------------------------------- steps

    def run(self):
        self.shots.mkdir(parents=True, exist_ok=True)
        self.preconditions()
        self.start_browser()
        d = self.driver
        env, cid = self.env, self.cid
        staging_agents = self.agents_of('staging')

        # 1. Log in as admin (a wrong token first: refused).
        self.step('log in with the admin token')
        d.get(self.url + '/ui/')
        self.wait_visible(tid('login-token'), 'the login form')
        self.find(tid('login-token'))[0].send_keys('not-a-ferry-token')
        self.click(tid('login-submit'))
        self.wait_visible(tid('error'), 'an error for an unknown token')
        whoami = self.login(self.args.admin_token, 'admin')
        print(f'    whoami: {whoami}', flush=True)
        storage = d.execute_script(
            "return {session: Object.keys(sessionStorage).map((k) => sessionStorage.getItem(k)),"
            " local: localStorage.length, cookie: document.cookie, url: location.href};")
        expect(self.args.admin_token in storage['session'],
               f'token storage: expected the token in sessionStorage, saw {len(storage["session"])} item(s)')
        expect(storage['local'] == 0 and storage['cookie'] == '' and self.args.admin_token not in storage['url'],
               f'token storage: expected nothing in localStorage, cookies or the URL, saw '
               f'localStorage items {storage["local"]}, cookie {storage["cookie"]!r}, url {storage["url"]!r}')

        # 2. Home: both environments, exactly six agent rows.
        self.step('home shows both environments and their six agents')

        def home_probe():
            envs = d.execute_script(
                "const out = {};"
                "for (const s of document.querySelectorAll('[data-testid^=\"env-\"][data-env]')) {"
                "  out[s.dataset.env] = Array.from(s.querySelectorAll('[data-testid=\"agent-row\"]'))"
                "    .map((r) => r.dataset.agent); }"
                "return {envs: out, rows: document.querySelectorAll('[data-testid=\"agent-row\"]').length};")
            ok = (envs['rows'] == 6 and bool(self.find(tid('env-staging'))) and bool(self.find(tid('env-production')))
                  and all(sorted(envs['envs'].get(e, [])) == [f'{e}-agent-{i}' for i in (1, 2, 3)]
                          for e in ('staging', 'production')))
            return ok, envs
        self.wait('sections env-staging and env-production with agents <env>-agent-1..3 (6 rows in all)',
                  home_probe)
        self.screenshot('home.png')

        # 3. Staging's environment page, its configuration, the live rollout.
        self.step(f'open {env}, its configuration {cid}: every agent applied')
        self.click(f'{tid("env-" + env)} {tid("configs-link")}', f'the link to the configurations of {env}')
        self.click(f'{tid("config-link")}[data-id="{cid}"]', f'the link to configuration {cid}')
        version = self.admin.config(env, cid)['version']
        self.wait_cells(f'{len(staging_agents)} rollout cells applied at version {version}',
                        staging_agents, 'applied', version)
        self.wait('the event stream to be live',
                  lambda: (self.find(tid('stream-state'))[0].text.strip().endswith('live'),
                           self.find(tid('stream-state'))[0].text))
        d.execute_script('window.__ferryNoReload = 1;')

        # 4. A change through the API turns every cell to the new version, live.
        self.step('change the configuration through the API: the cells follow live')
        rec = self.admin.config(env, cid)
        good_doc = copy.deepcopy(rec['document'])
        taken = {p.get('path') for p in good_doc['virtual_hosts'][0]['paths']}
        new_path = next(p for p in (f'/dash-test-{i}' if i else '/dash-test' for i in range(100)) if p not in taken)
        good_doc['virtual_hosts'][0]['paths'].append({'path': new_path, 'backends': ['127.0.0.1:9']})
        version_before = rec['version']
        saved = self.admin.put(env, cid, good_doc, rec['version'])
        changed_at = time.monotonic()
        v_good = saved['version']
        expect(v_good > version_before, f'PUT: expected a version above {version_before}, got {v_good}')
        self.wait_cells(f'every rollout cell applied at version {v_good} within {self.args.rollout_timeout:g} s '
                        f'of the change', staging_agents, 'applied', v_good, timeout=self.args.rollout_timeout)
        print(f'    cells showed version {v_good} applied {time.monotonic() - changed_at:.2f} s after the PUT',
              flush=True)
        flag = d.execute_script('return window.__ferryNoReload;')
        expect(flag == 1, f'the page must update without reloading: window.__ferryNoReload is {flag!r}, expected 1')
        self.wait(f'the document on the page to show {new_path}',
                  lambda: (new_path in self.find(tid('document'))[0].text,
                           self.find(tid('document'))[0].text[:200]))
        self.screenshot('rollout.png')

        # 5. A certificate that does not exist: every agent fails, with nginx's reason.
        self.step('a TLS certificate that does not exist: cells turn failed with the reason')
        bad_doc = copy.deepcopy(good_doc)
        bad_doc['virtual_hosts'][0]['tls'] = {'certificate': '/nonexistent/ferry-dash.pem',
                                              'key': '/nonexistent/ferry-dash.key'}
        v_bad = self.admin.put(env, cid, bad_doc, v_good)['version']

        def names_the_file(message):
            text = message.lower()
            return 'ferry-dash' in text or 'cannot load certificate' in text
        self.wait_cells('every rollout cell failed with a message naming the missing certificate',
                        staging_agents, 'failed', message_check=names_the_file)
        self.wait('the rollout summary to count the failures',
                  lambda: ('failed' in self.find(tid('rollout-summary'))[0].text
                           and self.find(tid('rollout-summary'))[0].get_attribute('data-version') == str(v_bad),
                           self.find(tid('rollout-summary'))[0].text))
        flag = d.execute_script('return window.__ferryNoReload;')
        expect(flag == 1, f'the page must update without reloading: window.__ferryNoReload is {flag!r}, expected 1')
        self.screenshot('failed.png')

        # 6. History: a diff, a rollback, then a conflict.
        self.step('history: diff two versions, roll back, then a stale rollback is a conflict')
        self.click(tid('history-link'))
        self.wait(f'history rows up to version {v_bad}',
                  lambda: (any(r.get_attribute('data-version') == str(v_bad) for r in self.find(tid('history-row'))),
                           [r.get_attribute('data-version') for r in self.find(tid('history-row'))]))
        from selenium.webdriver.support.ui import Select
        def show_diff(older, newer):
            Select(self.find(tid('diff-from'))[0]).select_by_value(str(older))
            Select(self.find(tid('diff-to'))[0]).select_by_value(str(newer))

        def diff_probe(older, newer, sign, cls):
            # The lines the change brought (the TLS files, the new path) are marked with `sign`;
            # every marked line carries its own mark.
            def probe():
                diff = self.find(tid('diff'))[0]
                lines = d.execute_script(
                    "return Array.from(arguments[0].querySelectorAll('.diff-add, .diff-del'))"
                    ".map((l) => [l.className, l.textContent]);", diff)
                added = [t for c, t in lines if 'diff-add' in c]
                removed = [t for c, t in lines if 'diff-del' in c]
                marked = added if cls == 'diff-add' else removed
                ok = (diff.is_displayed() and diff.get_attribute('data-from') == str(older)
                      and diff.get_attribute('data-to') == str(newer)
                      and all(t.startswith('+') for t in added) and all(t.startswith('-') for t in removed)
                      and any('ferry-dash.pem' in t for t in marked) and any(new_path in t for t in marked))
                return ok, {'from': diff.get_attribute('data-from'), 'to': diff.get_attribute('data-to'),
                            'added': added, 'removed': removed}
            return probe

        show_diff(version_before, v_bad)
        seen = self.wait(f'a diff of versions {version_before} → {v_bad} with + lines (the TLS files, '
                         f'{new_path})', diff_probe(version_before, v_bad, '+', 'diff-add'))
        show_diff(v_bad, version_before)
        seen = self.wait(f'a diff of versions {v_bad} → {version_before} with - lines (the TLS files, '
                         f'{new_path})', diff_probe(v_bad, version_before, '-', 'diff-del'))
        print(f'    diff: {len(seen["added"])} added, {len(seen["removed"])} removed line(s)', flush=True)

        self.click(tid(f'rollback-{v_good}'), f'the button to roll back to version {v_good}')
        done = self.wait_visible(tid('rolled-back'), 'the rollback to succeed')
        v_rb = int(done.get_attribute('data-version'))
        current = self.admin.config(env, cid)
        expect(v_rb > v_bad and current['version'] == v_rb and current['document'] == good_doc,
               f'rollback: expected a new version above {v_bad} holding version {v_good}\'s document, '
               f'the page says {v_rb}, the API has version {current["version"]}')
        self.click(tid('config-page-link'))
        self.wait_cells(f'every rollout cell applied again at version {v_rb}', staging_agents, 'applied', v_rb)
        flag = d.execute_script('return window.__ferryNoReload;')
        expect(flag == 1, f'navigation must not reload the page: window.__ferryNoReload is {flag!r}, expected 1')

        self.click(tid('history-link'))
        self.wait(f'the history page at version {v_rb}',
                  lambda: (self.find(tid('history'))[0].get_attribute('data-current-version') == str(v_rb)
                           and bool(self.find(tid(f'rollback-{version_before}'))),
                           self.find(tid('history'))[0].get_attribute('data-current-version')))
        bump_doc = copy.deepcopy(good_doc)
        bump_doc['virtual_hosts'][0]['paths'].append({'path': new_path + '-bump', 'backends': ['127.0.0.1:9']})
        v_bump = self.admin.put(env, cid, bump_doc, v_rb)['version']
        self.click(tid(f'rollback-{version_before}'), f'the button to roll back to version {version_before}')
        conflict = self.wait_visible(tid('conflict'), 'a conflict for the stale rollback')
        expect(f'current version is {v_bump}' in conflict.text,
               f'conflict message: expected "current version is {v_bump}", saw {conflict.text!r}')
        after = self.admin.config(env, cid)['version']
        expect(after == v_bump, f'the stale rollback must change nothing: version is {after}, expected {v_bump}')
        d.execute_script('window.scrollTo(0, 0);')
        self.screenshot('history.png')
        wait_api(f'version {v_bump} to be applied everywhere',
                 lambda: ((lambda s: (s.get('version') == v_bump and s['summary'].get('complete'), s['summary']))(
                     self.status(env, cid))), self.timeout)

        # 7. Validation errors on the edit and the create pages.
        self.step('edit: an invalid hostname shows the field error; create: invalid JSON is refused')
        self.click(tid('reload'), 'the reload button of the conflict')
        self.click(tid('config-page-link'))
        self.click(tid('edit-button'))
        editor = self.wait_visible(tid('doc-editor'), 'the document editor')
        current = self.admin.config(env, cid)
        try:
            prefilled = json.loads(editor.get_attribute('value'))
        except ValueError as e:
            raise Failure(f'edit page: the editor must hold the current document as JSON: {e}') from None
        expect(prefilled == current['document'],
               f'edit page: expected the editor to hold version {current["version"]}\'s document, saw {prefilled!r}')
        invalid = copy.deepcopy(current['document'])
        invalid['virtual_hosts'][0]['hostname'] = 'shop_bad'
        self.set_textarea(editor, json.dumps(invalid, indent=2))
        self.click(tid('save'))
        field_css = f'{tid("field-error")}[data-field="virtual_hosts[0].hostname"]'
        error = self.wait_visible(field_css, 'a field-error for virtual_hosts[0].hostname')
        expect('virtual_hosts[0].hostname' in error.text and len(error.text) > len('virtual_hosts[0].hostname: '),
               f'field error: expected the field path and the reason, saw {error.text!r}')
        expect(self.admin.config(env, cid)['version'] == current['version'],
               'an invalid document must not be saved')
        self.screenshot('edit.png')

        configs_before = len(self.admin.ok('GET', f'/api/v1/environments/{env}/configs')[0])
        self.click(f'nav.crumbs a[href="#/env/{env}"]', f'the breadcrumb link to {env}')
        self.click(tid('new-config'))
        editor = self.wait_visible(tid('doc-editor'), 'the document editor for a new configuration')
        try:
            sample = json.loads(editor.get_attribute('value'))
        except ValueError as e:
            raise Failure(f'new configuration: the editor must start with a sample document: {e}') from None
        expect(isinstance(sample, dict) and sample.get('kind') == 'ingress',
               f'new configuration: expected a sample ingress document, saw {sample!r}')
        self.set_textarea(editor, '{"kind": "ingress", "virtual_hosts": [')
        self.click(tid('save'))
        shown = self.wait_visible(tid('error'), 'an error for invalid JSON')
        print(f'    invalid JSON: {shown.text}', flush=True)
        self.set_textarea(editor, json.dumps({'kind': 'ingress', 'virtual_hosts': [
            {'hostname': 'new_bad', 'paths': [{'path': '/', 'backends': ['127.0.0.1:9']}]}]}))
        self.click(tid('save'))
        error = self.wait_visible(field_css, 'a field-error for virtual_hosts[0].hostname on create')
        configs_after = len(self.admin.ok('GET', f'/api/v1/environments/{env}/configs')[0])
        expect(configs_after == configs_before,
               f'refused documents must not be created: {configs_before} configurations before, {configs_after} after')

        # 8. A read-only token sees everything and can change nothing.
        self.step('log out; the read token sees the rollout and no write control at all')
        self.click(tid('logout'))
        self.wait_visible(tid('login-token'), 'the login form after logging out')
        left = d.execute_script('return sessionStorage.length + localStorage.length;')
        expect(left == 0, f'logout: expected the token gone from storage, {left} item(s) left')
        self.login(self.args.read_token, 'read')
        who, _ = self.reader.ok('GET', '/api/v1/whoami')
        allowed = who.get('environments')
        r_env = 'staging' if allowed is None or 'staging' in allowed else allowed[0]
        r_cid = self.ingress_config(self.reader, r_env)['id']
        d.execute_script('location.hash = "#/";')
        self.wait_visible(tid(f'env-{r_env}'), f'the {r_env} section on the home page')
        self.wait('agent rows on the home page', lambda: (len(self.find(tid('agent-row'))) >= 3,
                                                          len(self.find(tid('agent-row')))))
        self.assert_no_write_controls('home page')
        self.click(f'{tid("env-" + r_env)} {tid("configs-link")}')
        self.wait_visible(f'{tid("config-link")}[data-id="{r_cid}"]', f'the link to {r_cid}')
        self.assert_no_write_controls('environment page')
        self.click(f'{tid("config-link")}[data-id="{r_cid}"]')
        r_agents = self.agents_of(r_env)
        r_version = self.reader.config(r_env, r_cid)['version']
        self.wait_cells(f'the rollout of {r_env} applied at version {r_version}', r_agents, 'applied', r_version)
        self.wait_visible(tid('history-link'))
        self.assert_no_write_controls('configuration page')
        self.screenshot('readonly.png')
        self.click(tid('history-link'))
        self.wait('the history rows', lambda: (bool(self.find(tid('history-row'))), len(self.find(tid('history-row')))))
        self.wait_visible(tid('diff'))
        self.assert_no_write_controls('history page')
        for page in (f'#/env/{r_env}/config/{r_cid}/edit', f'#/env/{r_env}/new'):
            d.execute_script('location.hash = arguments[0];', page)
            self.wait_visible(tid('read-only'), f'the read-only notice on {page}')
            self.assert_no_write_controls(f'page {page}')
        flag = d.execute_script('return window.__ferryNoReload;')
        expect(flag == 1, f'the session must run without page reloads: window.__ferryNoReload is {flag!r}')
        d.refresh()
        self.wait(f'the session to survive a reload of the tab (token in sessionStorage)',
                  lambda: (bool(self.find(tid('read-only'))) and bool(self.find(tid('whoami')))
                           and self.find(tid('whoami'))[0].get_attribute('data-role') == 'read',
                           self.page_summary()))

        # 9. The page kept to its CSP (screenshots were checked as they were taken).
        self.step('no Content-Security-Policy violations in the browser log')
        violations = [e['message'] for e in self.browser_log()
                      if 'Content Security Policy' in e.get('message', '') or 'Refused to' in e.get('message', '')]
        expect(not violations, f'expected no CSP violations, the browser logged: {violations}')

    def browser_log(self):
        try:
            return self.driver.get_log('browser')
        except Exception:
            return []

    # -------------------------------------------------------------- after the run

    def restore(self):
        """Puts the original document back (best effort) so the demo ends rolled out."""
        if not self.cid or self.original_doc is None:
            return
        try:
            rec = self.admin.config(self.env, self.cid)
            if rec['document'] != self.original_doc or rec.get('deleted'):
                rec = self.admin.put(self.env, self.cid, self.original_doc, rec['version'])
                print(f'    restored the original document of {self.env}/{self.cid} as version {rec["version"]}',
                      flush=True)
        except Exception as e:
            print(f'    (could not restore the original document: {e})', flush=True)

    def report_failure(self):
        if self.driver is None:
            return
        try:
            path = self.shots / 'failure.png'
            path.write_bytes(self.driver.get_screenshot_as_png())
            print(f'    page at the failure: {path}', file=sys.stderr)
            print(f'    page state: {self.page_summary()}', file=sys.stderr)
        except Exception as e:
            print(f'    (no screenshot of the failure: {e})', file=sys.stderr)
        for entry in self.browser_log()[-20:]:
            print(f'    browser {entry.get("level")}: {entry.get("message")}', file=sys.stderr)


def main():
    parser = argparse.ArgumentParser(description='Real-browser test of the ferry dashboard.')
    parser.add_argument('--url', required=True, help='controller base URL, e.g. http://127.0.0.1:8080')
    parser.add_argument('--admin-token', required=True)
    parser.add_argument('--read-token', required=True)
    parser.add_argument('--screenshots', required=True, help='directory for the PNG screenshots')
    parser.add_argument('--chromium', default='/usr/bin/chromium')
    parser.add_argument('--chromedriver', default='/usr/bin/chromedriver')
    parser.add_argument('--timeout', type=float, default=20.0, help='seconds for each wait (default 20)')
    parser.add_argument('--rollout-timeout', type=float, default=5.0,
                        help='seconds from a change to every cell showing it applied (default 5)')
    args = parser.parse_args()

    test = DashboardTest(args)
    started = time.monotonic()
    try:
        test.run()
    except Failure as e:
        print(f'FAILED at step {test.step_no}: {e}', file=sys.stderr)
        test.report_failure()
        return 1
    except Exception as e:  # selenium or the network: still a failure, with the trace
        print(f'FAILED at step {test.step_no}: unexpected {type(e).__name__}: {e}', file=sys.stderr)
        traceback.print_exc()
        test.report_failure()
        return 1
    finally:
        test.restore()
        if test.driver is not None:
            try:
                test.driver.quit()
            except Exception:
                pass
    print(f'dashboard test passed: steps 0 to {test.step_no} in {time.monotonic() - started:.1f} s', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
