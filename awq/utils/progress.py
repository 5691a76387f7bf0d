"""Progress reporting for long work: a tqdm bar when tqdm is installed, plain log lines otherwise."""
import sys
import time


class _LogBar:
    """Minimal tqdm stand-in: prints `desc: i/total (elapsed)` lines, at most every ~5 s."""

    def __init__(self, iterable=None, total=None, desc="", file=None, disable=False):
        self.iterable, self.total, self.desc = iterable, total, desc
        self.file = file or sys.stderr
        self.n, self.t0, self.last, self.disable = 0, time.time(), 0.0, disable
        self.postfix = ""
        if self.total is None and iterable is not None and hasattr(iterable, "__len__"):
            self.total = len(iterable)

    def __iter__(self):
        for x in self.iterable:
            yield x
            self.update(1)
        self.close()

    def set_postfix_str(self, s):
        self.postfix = s

    def update(self, k=1):
        self.n += k
        now = time.time()
        if not self.disable and (now - self.last > 5 or (self.total and self.n >= self.total)):
            self.last = now
            tot = f"/{self.total}" if self.total else ""
            pf = f" {self.postfix}" if self.postfix else ""
            print(f"{self.desc}: {self.n}{tot} ({now - self.t0:.1f}s){pf}", file=self.file, flush=True)

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def progress(iterable=None, total=None, desc="", disable=False):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _LogBar(iterable, total=total, desc=desc, disable=disable)
    return tqdm(iterable, total=total, desc=desc, disable=disable, dynamic_ncols=True)
