"""Entry point: ``python main.py {fit,validate,test,predict} --config configs/<experiment>.yaml``."""

from convrepro.cli import main

if __name__ == "__main__":
    main()
