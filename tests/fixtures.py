"""Small synthetic handwriting in the processed-data format, tiny trained checkpoints, and lines
of ink in the file formats that are read (IAM-OnDB stroke files, InkML, JSON).

Lines are loops drawn by a fixed rhythm plus noise, each written as `text` characters of 8 points:
learnable in a few dozen steps, so a falling loss means the model really learns.
"""
import json
import os
import xml.etree.ElementTree as ET

import numpy as np

import dataset

TINY_MODEL = ["--cell_size", "16", "--num_clusters", "3", "--K", "2", "--batch_size", "8"]


def make_handwriting_data(num_lines, seed=0, points_per_char=8):
    rng = np.random.default_rng(seed)
    offsets, codes, texts = [], [], []
    for _ in range(num_lines):
        text = "".join(rng.choice(list("abc "), size=rng.integers(3, 7)))
        n = len(text) * points_per_char
        t = np.arange(n)
        line = np.zeros((n, 3), np.float32)
        line[:, 1] = np.cos(t * 0.8) + 0.1 * rng.standard_normal(n)
        line[:, 2] = np.sin(t * 0.8) + 0.1 * rng.standard_normal(n)
        line[points_per_char - 1::points_per_char, 0] = 1  # a pen lift after every character
        offsets.append(line)
        codes.append(dataset.encode_text(text))
        texts.append(text)
    return dataset.HandwritingData(offsets, codes, texts, [f"line-{i}" for i in range(num_lines)],
                                 dataset.ALPHABET, np.array([0.5, -0.2], np.float32),
                                 np.array([2.0, 3.0], np.float32))


def write_data_dir(path, num_train=32, num_validation=8):
    os.makedirs(path, exist_ok=True)
    dataset.save_data(os.path.join(path, "train.npz"), make_handwriting_data(num_train, seed=1))
    dataset.save_data(os.path.join(path, "validation.npz"), make_handwriting_data(num_validation, seed=2))
    return str(path)


def train_tiny(tmp_path, task, *extra_args):
    """Train a tiny model for a couple of epochs; returns the path of its best checkpoint."""
    import train

    data_dir = write_data_dir(os.path.join(tmp_path, "data"))
    model_dir = os.path.join(tmp_path, "save")
    args = train.parse_args(["--task", task, "--data_dir", data_dir, "--model_dir", model_dir,
                             "--num_epochs", "2", "--precision", "fp32", *TINY_MODEL, *extra_args])
    train.train(args)
    return os.path.join(model_dir, f"{task}_best.pt")


# ----------------------------------------------------------------------------- IAM-OnDB stroke files
#
# Lines in the real file format, with the offsets they give worked out by hand (y flipped:
# -(y[t] - y[t-1])): ink.py's and data_preprocessing.py's tests read them.

def stroke_xml(strokes, base=1000.0, attribute_order=("x", "y", "time")):
    """An IAM-OnDB stroke file; strokes are lists of (x, y, seconds after `base`)."""
    out = ['<?xml version="1.0" encoding="ISO-8859-1"?>', "<WhiteboardCaptureSession>",
           "  <WhiteboardDescription>", '    <SensorLocation corner="top_left"/>',
           '    <DiagonallyOppositeCoords x="6512" y="1376"/>',
           '    <VerticallyOppositeCoords x="966" y="1376"/>',
           '    <HorizontallyOppositeCoords x="6512" y="787"/>', "  </WhiteboardDescription>",
           "  <StrokeSet>"]
    for stroke in strokes:
        out.append(f'    <Stroke colour="black" start_time="{base + stroke[0][2]:.2f}" '
                   f'end_time="{base + stroke[-1][2]:.2f}">')
        for x, y, t in stroke:
            values = {"x": str(x), "y": str(y), "time": f"{base + t:.2f}"}
            out.append("      <Point " + " ".join(f'{k}="{values[k]}"' for k in attribute_order) + "/>")
        out.append("    </Stroke>")
    out += ["  </StrokeSet>", "</WhiteboardCaptureSession>"]
    return "\n".join(out) + "\n"



NORMAL_TIMES = [0.00, 0.02, 0.03, 0.05, 0.06, 0.08, 0.09, 0.11, 0.12, 0.14]  # ~15 ms apart

# Line A: two strokes; offsets by hand (y flipped: -(y[t] - y[t-1])).
LINE_A = [[(100, 500, 0.00), (103, 496, 0.02), (107, 490, 0.03), (112, 488, 0.05), (118, 489, 0.06)],
          [(160, 520, 0.50), (160, 510, 0.52), (161, 500, 0.53), (163, 493, 0.55), (166, 490, 0.56)]]
OFFSETS_A = [[0, 0, 0], [0, 3, 4], [0, 4, 6], [0, 5, 2], [1, 6, -1],
             [0, 42, -31], [0, 0, 10], [0, 1, 10], [0, 2, 7], [1, 3, 3]]
# Line B: one stroke, x +10 and y -2 (upwards on the board) per reading.
LINE_B = [[(200 + 10 * i, 300 - 2 * i, t) for i, t in enumerate(NORMAL_TIMES)]]
OFFSETS_B = [[0, 0, 0]] + [[0, 10, 2]] * 8 + [[1, 10, 2]]
# Line C: a lost reading (0.03 s gap: one point at x=20 goes in), a glitch that jumps 400 units
# away and 390 back (both steps removed), and a 0.5 s pause (no interpolation).
LINE_C = [[(0, 0, 0.00), (10, 0, 0.02), (30, 0, 0.05), (40, 0, 0.06), (440, 0, 0.08), (450, 0, 0.09),
           (60, 0, 0.11), (70, 0, 0.12), (80, 0, 0.14), (90, 0, 0.15), (100, 0, 0.65), (110, 0, 0.66)]]
OFFSETS_C = [[0, 0, 0]] + [[0, 10, 0]] * 9 + [[1, 10, 0]]
# Line D: nine readings, then a single-point stroke (a dot) 10 left and 20 up.
LINE_D = [[(500 + 5 * i, 100 - 5 * i, t) for i, t in enumerate(NORMAL_TIMES[:9])], [(530, 40, 1.00)]]
OFFSETS_D = [[0, 0, 0]] + [[0, 5, 5]] * 7 + [[1, 5, 5], [1, -10, 20]]
# Line E (validation): x +7, y +3 (downwards) per reading.
LINE_E = [[(7 * i, 3 * i, t) for i, t in enumerate(NORMAL_TIMES)]]
OFFSETS_E = [[0, 0, 0]] + [[0, 7, -3]] * 8 + [[1, 7, -3]]


# ----------------------------------------------------------------------------- one line of ink in each format
#
# The same two strokes in each format a prime or an --ink_dir file may take, y down: (10, 100) (13, 96) (13, 92), then (20, 100) (21, 100).
# As offsets, y up, row 0 the zero offset: the second stroke begins 7 right and 8 down of the
# first one's end.
EXPECTED_OFFSETS = [[0, 0, 0], [0, 3, 4], [1, 0, 4], [0, 7, -8], [1, 1, 0]]

IAM_XML = """<?xml version="1.0" encoding="ISO-8859-1"?>
<WhiteboardCaptureSession>
  <WhiteboardDescription><SensorLocation corner="top_left"/></WhiteboardDescription>
  <StrokeSet>
    <Stroke colour="black" start_time="1.00" end_time="1.03">
      <Point x="10" y="100" time="1.00"/>
      <Point x="13" y="96" time="1.02"/>
      <Point x="13" y="92" time="1.03"/>
    </Stroke>
    <Stroke colour="black" start_time="1.20" end_time="1.22">
      <Point x="20" y="100" time="1.20"/>
      <Point x="21" y="100" time="1.22"/>
    </Stroke>
  </StrokeSet>
</WhiteboardCaptureSession>
"""

INKML = """<?xml version="1.0" encoding="UTF-8"?>
<ink xmlns="http://www.w3.org/2003/InkML">
  <annotation type="transcription">ab</annotation>
  <definitions><context><traceFormat>
    <channel name="T" type="decimal"/><channel name="X" type="decimal"/><channel name="Y" type="decimal"/>
  </traceFormat></context></definitions>
  <traceGroup>
    <trace>0.00 10 100, 0.02 13 96, 0.03 13 92</trace>
    <trace>0.20 20 100,0.22 21 100</trace>
  </traceGroup>
</ink>
"""

JSON = json.dumps({"text": "ab", "strokes": [[[10, 100], [13, 96], [13, 92]], [[20, 100], [21, 100]]]})


def write_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return str(path)


def svg_paths(path):
    """The <path> elements of an SVG file that utils.write_svg wrote."""
    svg = "{http://www.w3.org/2000/svg}"
    root = ET.parse(path).getroot()
    assert root.tag == svg + "svg"
    return root.findall(f".//{svg}path")
