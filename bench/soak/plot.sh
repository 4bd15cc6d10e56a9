#!/usr/bin/env bash
# Draws a soak's samples (bench/soak/run.sh's CSV) as a PNG: RSS (MiB, left
# axis) and events/s (right axis) over time, with gnuplot (Debian:
# `apt-get install gnuplot-nox`).
#
#   bench/soak/plot.sh [CSV] [PNG]     defaults bench/out/soak/samples.csv and
#                                      bench/out/soak/soak.png
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
csv="${1:-$root/bench/out/soak/samples.csv}"
png="${2:-$root/bench/out/soak/soak.png}"
command -v gnuplot > /dev/null || { echo "plot.sh: gnuplot is missing (apt-get install gnuplot-nox)" >&2; exit 1; }
[ -s "$csv" ] || { echo "plot.sh: no samples in $csv" >&2; exit 1; }
title="${TITLE:-pipelined soak: RSS and events/s}"
gnuplot <<GNUPLOT
set terminal pngcairo size 1200,600 font ",11"
set output "$png"
set datafile separator ","
set title "$title"
set xlabel "elapsed (minutes)"
set ylabel "RSS (MiB)"
set y2label "events/s"
set ytics nomirror
set y2tics
set yrange [0:*]
set y2range [0:*]
set key top left
set grid
plot "$csv" using (\$1/60):(\$2/1024) skip 1 with lines linewidth 2 title "RSS (MiB)" axes x1y1, \
     "$csv" using (\$1/60):6 skip 1 with lines linewidth 1 title "events/s" axes x1y2
GNUPLOT
echo "plot.sh: wrote $png"
