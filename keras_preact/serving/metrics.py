"""The server's counters in Prometheus' text format (`/monitoring/prometheus/metrics`, as TF Serving).

    >>> metrics = Metrics()
    >>> metrics.request("predict", 200, 0.02)
    >>> 'keras_preact_requests_total{route="predict",code="200"} 1' in metrics.text({"AVAILABLE": 1})
    True
"""

import bisect
import collections
import threading

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)  # seconds


class Metrics:
    """Requests by route and status code, their latency histogram by route, and model loads."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests = collections.Counter()  # (route, code)
        self.latency = collections.defaultdict(lambda: [0] * (len(BUCKETS) + 1))  # route: counts per bucket
        self.latency_sum = collections.Counter()  # route: seconds
        self.loads = collections.Counter()  # outcome

    def request(self, route, code, seconds):
        with self._lock:
            self.requests[route, code] += 1
            self.latency[route][bisect.bisect_left(BUCKETS, seconds)] += 1
            self.latency_sum[route] += seconds

    def load(self, outcome):
        with self._lock:
            self.loads[outcome] += 1

    def text(self, versions_by_state):
        """The exposition text; `versions_by_state`: {state: number of model versions in it}."""
        with self._lock:
            lines = _family("keras_preact_requests_total", "counter", "HTTP requests by route and status code.",
                            ((f'route="{r}",code="{c}"', n) for (r, c), n in sorted(self.requests.items())))
            lines += ["# HELP keras_preact_request_duration_seconds Time from a request's arrival to its answer.",
                      "# TYPE keras_preact_request_duration_seconds histogram"]
            for route, counts in sorted(self.latency.items()):
                total = 0
                for bound, count in zip((*map(str, BUCKETS), "+Inf"), counts):
                    total += count
                    lines.append(f'keras_preact_request_duration_seconds_bucket{{route="{route}",le="{bound}"}} {total}')
                lines += [f'keras_preact_request_duration_seconds_sum{{route="{route}"}} {self.latency_sum[route]:.6f}',
                          f'keras_preact_request_duration_seconds_count{{route="{route}"}} {total}']
            lines += _family("keras_preact_model_loads_total", "counter", "Model version loads by outcome.",
                             ((f'outcome="{o}"', self.loads[o]) for o in ("success", "failure")))
        lines += _family("keras_preact_model_versions", "gauge", "Model versions by state.",
                         ((f'state="{s}"', n) for s, n in sorted(versions_by_state.items())))
        return "\n".join(lines) + "\n"


def _family(name, kind, description, samples):
    return [f"# HELP {name} {description}", f"# TYPE {name} {kind}", *(f"{name}{{{labels}}} {value}" for labels, value in samples)]
