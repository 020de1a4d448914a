import enum
from collections import OrderedDict


class Color(enum.IntEnum):
    RED = 1


def handle(request):
    return {
        "tuple": (1, "a"),
        "bool": True,
        "enum": Color.RED,
        "ordered": OrderedDict([("z", 1), ("a", 2)]),
        "big": 2**100,
        "neg_big": -(2**80),
        "float": 0.1,
        "types": {k: type(v).__name__ for k, v in request.items()} if isinstance(request, dict) else None,
    }
