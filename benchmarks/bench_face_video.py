"""`face video` over a long generated video (issue 26): is memory flat and the time per frame constant from the
first minute of video to the last?

A video of drawn faces (vlm_salience/face_synth.py: two people crossing back and forth, changing expression every
4 s) is generated frame by frame (an hour at 320x240 and 5 fps by default: 18,000 frames), then `face video` runs
over it in this process with a hook after every written chunk. Per minute of video it records the resident memory
(VmRSS, its largest value in that minute) and the wall time per analysed frame; it prints the table and the ratios
of the last minute to the first (target: within 10%), with the load average at the start and the end (the machine
is shared: time per frame moves with the load, memory does not).

    python benchmarks/bench_face_video.py                    # an hour, every 5th frame analysed (3,600 frames)
    python benchmarks/bench_face_video.py --minutes 10 --every 1 --json runs/bench_face_video.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(key + ":"))


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=60.0, help="length of the generated video (default 60)")
    ap.add_argument("--fps", type=float, default=5.0)
    ap.add_argument("--size", default="320x240", help="WxH (default 320x240)")
    ap.add_argument("--faces", type=int, default=2)
    ap.add_argument("--period", type=float, default=60.0,
                    help="seconds for a face to walk across and back (default 60: 8 px/s at 320 px)")
    ap.add_argument("--every", type=int, default=5, help="analyse every n-th frame (default 5: 1 frame a second)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--detector", default="mtcnn")
    ap.add_argument("--min-face", type=int, default=40,
                    help="MTCNN's smallest face side in px (the drawn faces are ~55 px wide; default 40)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    ap.add_argument("--work", help="folder for the video and the tables (default: a temporary one)")
    ap.add_argument("--json", help="write the per-minute table and the ratios here too")
    args = ap.parse_args()

    import torch

    from vlm_salience.face_synth import write_drawn_video
    from vlm_salience.face_video import VideoSettings, face_video, warm_up
    from vlm_salience.models.faces.analyzer import FaceAnalyzer
    from vlm_salience.models.faces.detector import MtcnnDetectorConfig
    from vlm_salience.models.faces.detectors import load_detector
    from vlm_salience.models.faces.expression import load_classifier

    torch.set_num_threads(args.threads)
    w, h = (int(v) for v in args.size.lower().split("x"))
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_face_video_"))
    video = work / f"drawn_{args.minutes:g}min_{w}x{h}_{args.fps:g}fps_{args.faces}faces_{args.period:g}s.mp4"
    print(f"load at start: {_load()}")
    t0 = time.perf_counter()
    if not video.is_file():
        n = write_drawn_video(video, args.minutes * 60, fps=args.fps, size=(h, w), faces=args.faces,
                              period_s=args.period)
        print(f"generated {video} ({n} frames, {video.stat().st_size / 1e6:.1f} MB) in "
              f"{time.perf_counter() - t0:.0f} s")
    det = (load_detector(MtcnnDetectorConfig(min_face_size=args.min_face)) if args.detector == "mtcnn"
           else load_detector(args.detector))
    analyzer = FaceAnalyzer(det, load_classifier())
    warm_up(analyzer)  # here too, so that the first chunk's time is not the models' set-up
    per_minute: dict[int, dict] = {}
    last = {"t": time.perf_counter(), "cpu": time.process_time()}

    def on_chunk(info: dict) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        minute = int(info["time_s"] // 60)
        m = per_minute.setdefault(minute, {"minute": minute + 1, "frames": 0, "seconds": 0.0, "cpu_seconds": 0.0,
                                           "rss_mb": 0.0})
        m["frames"] += info["frames"]
        m["seconds"] += now - last["t"]
        m["cpu_seconds"] += cpu - last["cpu"]  # this process's CPU time: less moved by other jobs than wall time
        m["rss_mb"] = max(m["rss_mb"], _status_kb("VmRSS") / 1024)
        last["t"], last["cpu"] = now, cpu

    t1 = time.perf_counter()
    last["t"], last["cpu"] = t1, time.process_time()
    summary = face_video([video], work / "out", analyzer=analyzer, fresh=True, progress=False, on_chunk=on_chunk,
                         settings=VideoSettings(every=args.every, batch=args.batch))
    total = time.perf_counter() - t1
    rows = [per_minute[k] for k in sorted(per_minute)]
    for r in rows:
        r["s_per_frame"] = r["seconds"] / max(1, r["frames"])
        r["cpu_s_per_frame"] = r["cpu_seconds"] / max(1, r["frames"])
    print(f"{'minute':>6s} {'frames':>6s} {'s/frame':>8s} {'cpu s/f':>8s} {'RSS MB':>8s}")
    for r in rows:
        print(f"{r['minute']:6d} {r['frames']:6d} {r['s_per_frame']:8.4f} {r['cpu_s_per_frame']:8.4f} "
              f"{r['rss_mb']:8.1f}")
    first, end = rows[0], rows[-1]
    ratios = {"rss_last_over_first": end["rss_mb"] / first["rss_mb"],
              "s_per_frame_last_over_first": end["s_per_frame"] / first["s_per_frame"],
              "cpu_s_per_frame_last_over_first": end["cpu_s_per_frame"] / first["cpu_s_per_frame"],
              "rss_max_over_first": max(r["rss_mb"] for r in rows) / first["rss_mb"]}
    pv = summary["per_video"][0]
    print(f"{len(rows)} minutes, {sum(r['frames'] for r in rows)} frames analysed in {total:.0f} s; "
          f"{pv['face_rows']} face rows, {pv['identities']} identities, {pv['gaps']} gaps; peak RSS "
          f"{_status_kb('VmHWM') / 1024:.0f} MB")
    print(f"minute {end['minute']} / minute 1: RSS {ratios['rss_last_over_first']:.3f}, time per frame "
          f"{ratios['s_per_frame_last_over_first']:.3f}, CPU time per frame "
          f"{ratios['cpu_s_per_frame_last_over_first']:.3f} (largest RSS of any minute / minute 1: "
          f"{ratios['rss_max_over_first']:.3f}); load at end: {_load()}")
    if args.json:
        from vlm_salience.atomic import write_text

        write_text(args.json, json.dumps({"args": vars(args), "minutes": rows, "ratios": ratios,
                                          "summary": pv}, indent=2) + "\n")


if __name__ == "__main__":
    main()
