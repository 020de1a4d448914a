"""gunicorn + Flask echo, served as the nanofaas Python runtime serves its app."""
from flask import Flask, request

app = Flask(__name__)


@app.post("/invoke")
def invoke():
    return request.get_json()


@app.get("/health")
def health():
    return {"status": "ok"}
