#!/usr/bin/env python3
"""Check every PromQL expression of a Grafana dashboard against a live Prometheus.

Usage:
    check_dashboard.py [--require-series] [--var NAME=VALUE ...] PROMETHEUS_URL DASHBOARD_JSON

Dashboard variables are replaced before querying: $namespace, $pipeline and
$instance (and any other custom variable) become ".*", $__rate_interval and
$__interval become "1m", $__range becomes "5m". Every expression is sent to
PROMETHEUS_URL/api/v1/query as an instant query. The script exits non-zero and
lists every expression that fails to parse or evaluate; with --require-series it
also fails expressions that return no series (use this when a real agent and the
operator are being scraped).

It also checks the dashboard structure the queries rely on: every target has
an "expr" and a "refId", and the dashboard has a uid.

Standard library only.
"""
import argparse
import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request

DEFAULT_VARS = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "5m",
    "__range_s": "300",
    "__range_ms": "300000",
    "__interval_ms": "60000",
    "namespace": ".*",
    "pipeline": ".*",
    "instance": ".*",
}
# Any other dashboard variable is treated as an "All" selection.
FALLBACK_VALUE = ".*"

VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::[^}]*)?\}|\$([A-Za-z_][A-Za-z0-9_]*)|\[\[([A-Za-z0-9_]+)\]\]")


def substitute(expr, variables):
    def repl(match):
        name = match.group(1) or match.group(2) or match.group(3)
        return variables.get(name, FALLBACK_VALUE)

    return VAR_RE.sub(repl, expr)


def iter_panels(panels):
    for panel in panels or []:
        yield panel
        # Collapsed rows keep their panels nested.
        yield from iter_panels(panel.get("panels"))


def collect_targets(dashboard):
    """Returns (errors, [(panel title, refId, expr)])."""
    errors = []
    found = []
    for panel in iter_panels(dashboard.get("panels")):
        if panel.get("type") == "row":
            continue
        title = panel.get("title", "<untitled panel %s>" % panel.get("id"))
        targets = panel.get("targets") or []
        if not targets:
            errors.append("panel %r has no targets" % title)
        for i, target in enumerate(targets):
            ref = target.get("refId")
            expr = target.get("expr")
            if not ref:
                errors.append("panel %r target #%d has no refId" % (title, i))
            if not expr or not str(expr).strip():
                errors.append("panel %r target %s has no expr" % (title, ref or "#%d" % i))
                continue
            found.append((title, ref or "#%d" % i, expr))
    return errors, found


def query(base_url, expr, timeout):
    url = base_url.rstrip("/") + "/api/v1/query"
    data = urllib.parse.urlencode({"query": expr}).encode()
    req = urllib.request.Request(url, data=data, method="POST")
    req.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read()
    except urllib.error.HTTPError as err:
        # Prometheus answers 400/422 with a JSON error body for bad queries.
        body = err.read()
    try:
        return json.loads(body)
    except ValueError:
        return {"status": "error", "error": "non-JSON response: %r" % body[:200]}


def result_count(payload):
    data = payload.get("data") or {}
    result = data.get("result")
    if data.get("resultType") in ("scalar", "string"):
        return 1 if result is not None else 0
    return len(result or [])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prometheus_url", help="e.g. http://127.0.0.1:9090")
    parser.add_argument("dashboard", help="path to the dashboard JSON")
    parser.add_argument("--require-series", action="store_true",
                        help="also fail expressions that return no series")
    parser.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                        help="override a variable substitution (repeatable)")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="per-query timeout in seconds (default 30)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print every expression and its series count")
    args = parser.parse_args(argv)

    variables = dict(DEFAULT_VARS)
    for item in args.var:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error("--var expects NAME=VALUE, got %r" % item)
        variables[name.lstrip("$")] = value

    try:
        with open(args.dashboard, encoding="utf-8") as fh:
            dashboard = json.load(fh)
    except (OSError, ValueError) as err:
        print("FAIL: cannot load dashboard %s: %s" % (args.dashboard, err))
        return 2

    failures, targets = collect_targets(dashboard)
    if not dashboard.get("uid"):
        failures.append("dashboard has no uid")
    if not targets:
        failures.append("dashboard has no query targets")

    for title, ref, expr in targets:
        promql = substitute(expr, variables)
        try:
            payload = query(args.prometheus_url, promql, args.timeout)
        except (urllib.error.URLError, OSError) as err:
            print("FAIL: cannot reach Prometheus at %s: %s" % (args.prometheus_url, err))
            return 2
        where = "panel %r refId %s" % (title, ref)
        if payload.get("status") != "success":
            failures.append("%s: %s: %s\n    expr: %s" % (
                where, payload.get("errorType", "error"), payload.get("error"), promql))
            continue
        count = result_count(payload)
        if args.verbose:
            print("ok %3d series  %s" % (count, where))
        if args.require_series and count == 0:
            failures.append("%s: returned no series\n    expr: %s" % (where, promql))

    if failures:
        print("FAIL: %d problem(s) in %s (%d expressions checked)" % (
            len(failures), args.dashboard, len(targets)))
        for failure in failures:
            print("  - " + failure)
        return 1
    print("OK: %d expressions in %s %s" % (
        len(targets), args.dashboard,
        "parse and return series" if args.require_series else "parse and evaluate"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
