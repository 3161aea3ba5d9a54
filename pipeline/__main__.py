import sys

from pipeline import allocator

allocator.choose_for_command(sys.argv[1:])  # before pipeline.cli loads polars

from pipeline.cli import main  # noqa: E402

sys.exit(main())
