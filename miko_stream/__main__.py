from miko_stream.cli import app

app()
