from lnexp.cli import app

app(prog_name="lnexp")
