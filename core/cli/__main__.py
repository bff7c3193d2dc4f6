from core.cli import program

program()
