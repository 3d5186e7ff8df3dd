"""Refresh and login latency, sequential, at two nodes side by side (bench/auth.sh, bench/redis.sh).

Each refresh (POST /.tether/token) writes the login session record as a login does, with a sync write,
but without argon2's 25 ms that would drown the difference; 2,000 measured after 100 warm-up ones, then
200 logins. Usage: login_latency.py PORT_A LABEL_A PORT_B LABEL_B (user alice, password tether-demo).
"""
import http.client
import json
import sys
import time


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * p))]


def measure(port):
    c = http.client.HTTPConnection("127.0.0.1", port)

    def login():
        c.request("POST", "/.tether/login", '{"username":"alice","password":"tether-demo"}',
                  {"Content-Type": "application/json", "Accept": "application/json"})
        return c.getresponse()

    r = login()
    tokens = json.loads(r.read())
    assert r.status == 200, r.status
    refresh = tokens["refresh_token"]
    times = []
    for i in range(2100):
        t = time.perf_counter()
        c.request("POST", "/.tether/token", "grant_type=refresh_token&refresh_token=" + refresh,
                  {"Content-Type": "application/x-www-form-urlencoded"})
        r = c.getresponse()
        body = r.read()
        if i >= 100:
            times.append((time.perf_counter() - t) * 1e6)
        assert r.status == 200, (r.status, body)
        refresh = json.loads(body)["refresh_token"]
    logins = []
    for _ in range(200):
        t = time.perf_counter()
        r = login()
        r.read()
        logins.append((time.perf_counter() - t) * 1e6)
        assert r.status == 200
    return times, logins


port_a, label_a, port_b, label_b = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
a_ref, a_log = measure(port_a)
b_ref, b_log = measure(port_b)
for name, a, b in (("refresh", a_ref, b_ref), ("login", a_log, b_log)):
    print(f"{name:8s} {label_a}: p50 {pct(a, .5):7.0f} us p99 {pct(a, .99):7.0f} us | "
          f"{label_b}: p50 {pct(b, .5):7.0f} us p99 {pct(b, .99):7.0f} us | "
          f"difference p50 {pct(a, .5) - pct(b, .5):+6.0f} us p99 {pct(a, .99) - pct(b, .99):+6.0f} us")
