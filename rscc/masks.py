"""Change-mask label encodings shared by the package's mask writers and readers (inference, metrics, data).

The remote-code processor (`processing_rscc.py`) keeps its own copy: it must load without the rscc package.
"""

# PNG grey level of each class id: LEVIR-CD's 0/255 for two classes, LEVIR-MCI's 0/128/255 (background, road,
# building; channel 0 of its RGB labels) for three.
MASK_GREY_LEVELS = {2: (0, 255), 3: (0, 128, 255)}
