#!/usr/bin/env python3
"""Makes the project's sound assets: generated tones and noise, each loopable where it loops.

    python3 assets/sounds/generate.py   # needs oggenc (Debian: vorbis-tools) for the .ogg files

The files are committed; run this only to change them. Everything is 48 kHz stereo 16-bit.
"""
import math, os, random, struct, subprocess, wave

RATE = 48_000
HERE = os.path.dirname(os.path.abspath(__file__))


def write_wav(name, frames):
    path = os.path.join(HERE, name)
    with wave.open(path, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(b"".join(
            struct.pack("<hh", *(max(-32767, min(32767, round(s * 32767))) for s in f))
            for f in frames))
    return path


def to_ogg(wav, ogg):
    subprocess.run(["oggenc", "-Q", "-q", "4", "-o", os.path.join(HERE, ogg), wav], check=True)
    os.remove(wav)


def sine(hz, seconds, amp):
    n = int(RATE * seconds)
    return [(amp * math.sin(2 * math.pi * hz * i / RATE),) * 2 for i in range(n)]


# A test tone: 1 s of 440 Hz at amplitude 0.5 (440 whole cycles: it loops without a click).
write_wav("tone-440.wav", sine(440, 1.0, 0.5))
# Another, for telling two sounds apart: 1 s of 1 kHz at amplitude 0.5.
write_wav("tone-1000.wav", sine(1000, 1.0, 0.5))

# Ambience: 4 s of a low hum (110 + 165 Hz, whole cycles in 4 s) under soft filtered noise,
# the noise cross-faded with its own start so the loop is seamless. Ogg Vorbis.
random.seed(11)
n = 4 * RATE
noise = []
y = 0.0
for _ in range(n):
    y = 0.97 * y + 0.03 * random.uniform(-1, 1)
    noise.append(y)
fade = RATE // 2
looped = [noise[i] if i >= fade else noise[i] * i / fade + noise[n - fade + i] * (1 - i / fade)
          for i in range(n - fade)]
m = len(looped)
hum = []
for i in range(m):
    t = i / RATE
    s = 0.18 * math.sin(2 * math.pi * 110 * t * n / m) + 0.12 * math.sin(2 * math.pi * 165 * t * n / m)
    hum.append((s + 0.6 * looped[i], s + 0.6 * looped[(i + RATE // 7) % m]))
to_ogg(write_wav("hum.wav", hum), "hum.ogg")

# Jump: a 0.18 s rising chirp (300 → 900 Hz) with a quick decay.
frames = []
phase = 0.0
for i in range(int(0.18 * RATE)):
    t = i / (0.18 * RATE)
    phase += 2 * math.pi * (300 + 600 * t) / RATE
    s = 0.6 * math.sin(phase) * (1 - t) ** 2
    frames.append((s, s))
write_wav("jump.wav", frames)

# Bump: a 0.12 s noise burst, low-passed, for a collision. Ogg Vorbis.
random.seed(5)
frames = []
y = 0.0
for i in range(int(0.12 * RATE)):
    y = 0.8 * y + 0.2 * random.uniform(-1, 1)
    s = 1.6 * y * math.exp(-i / (0.03 * RATE))
    frames.append((s, s))
to_ogg(write_wav("bump.wav", frames), "bump.ogg")
