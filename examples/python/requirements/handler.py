import datetime

import humanize


def handle(request, context):
    """Uses a package from requirements.txt (pip install -r requirements.txt into the image)."""
    n = int(request.get("bytes", 0))
    context.logger.info("formatting %d bytes", n)
    return {
        "size": humanize.naturalsize(n),
        "remaining": humanize.naturaldelta(datetime.timedelta(milliseconds=context.remaining_ms())),
    }
