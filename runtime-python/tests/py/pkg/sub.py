def main(request):
    return {"from": __name__, "request": request}
