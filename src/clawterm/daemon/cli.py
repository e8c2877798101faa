"""``clawtermd`` command line: run the daemon, or manage tokens."""

from __future__ import annotations

import logging
import sys

from ..errors import ClawTermError
from .config import Config, build_parser, config_from_args
from .statedir import default_state_dir
from .tokens import TokenFileError, cmd_token_list, cmd_token_new

__all__ = ["main"]


def _setup_logging(config: Config) -> None:
    logging.basicConfig(
        level=getattr(logging, config.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        if config.log_format == "text"
        else '{"time": "%(asctime)s", "level": "%(levelname)s", "msg": %(message)r}',
        stream=sys.stderr,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    config = config_from_args(args)
    _setup_logging(config)
    state_dir = config.state_dir or default_state_dir()
    tokens_path = config.tokens or state_dir / "tokens.toml"
    if args.command == "token":
        try:
            if args.token_command == "new":
                state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
                token = cmd_token_new(tokens_path, args.tenant, args.agents, args.label)
                print(token)
                print(
                    f"stored its SHA-256 in {tokens_path}; the token is shown only now",
                    file=sys.stderr,
                )
            else:
                for line in cmd_token_list(tokens_path):
                    print(line)
        except (TokenFileError, ValueError) as exc:
            print(f"clawtermd: {exc}", file=sys.stderr)
            return 2
        return 0

    from .server import run_daemon

    try:
        run_daemon(config)
    except ClawTermError as exc:
        logging.getLogger("clawterm.daemon").error("%s", exc)
        return 1
    except OSError as exc:
        logging.getLogger("clawterm.daemon").error("cannot start: %s", exc)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
