"""Asks a running Prometheus what the dashboard and the alerts would show.

  python dashboard.py PROMETHEUS_URL wait-target JOB
  python dashboard.py PROMETHEUS_URL wait-alert NAME
  python dashboard.py PROMETHEUS_URL panels deploy/grafana/cachelock.json

wait-target and wait-alert poll for up to 90 s; panels runs every query of every
panel (Grafana's variables replaced by what "All" and a 1-minute rate window give)
and fails on any query that errs or returns no series.
"""

import json
import sys
import time
import urllib.parse
import urllib.request


def query(base, expr):
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as answer:
        body = json.load(answer)
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    return body["data"]["result"]


def poll(what, check, seconds=90):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.5)
    sys.exit(f"{what} did not happen within {seconds} s")


def main(base, command, argument):
    if command == "wait-target":
        poll(f"Prometheus scraping {argument}", lambda: query(base, f'up{{job="{argument}"}} == 1'))
        print(f"Prometheus scrapes {argument}")
    elif command == "wait-alert":
        def firing():
            with urllib.request.urlopen(f"{base}/api/v1/alerts", timeout=10) as answer:
                alerts = json.load(answer)["data"]["alerts"]
            return any(a["labels"].get("alertname") == argument and a["state"] == "firing" for a in alerts)
        poll(f"alert {argument} firing", firing)
        print(f"alert {argument} is firing")
    elif command == "panels":
        dashboard = json.load(open(argument))
        empty = 0
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                expr = target["expr"].replace("$__rate_interval", "1m").replace("$instance", ".*")
                series = query(base, expr)
                print(f"  {len(series):3d} series  {panel['title']} [{target['refId']}]")
                empty += not series
        if empty:
            sys.exit(f"{empty} dashboard queries returned no series")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(*sys.argv[1:])
