"""E-mail over SMTP (``smtplib``): plain, STARTTLS (RFC 3207) or implicit TLS (RFC 8314), optional AUTH.

The server's certificate is verified (hostname and chain) against the system store or
``RPM_SMTP_CA_FILE``; there is no switch to turn verification off. One message is
``multipart/alternative`` (plain text, then HTML) with From, To, Subject, Date and a Message-ID
that stays the same across retries, so a mail client shows a message that was sent twice (the
connection dropped after the server took it) once. ``Auto-Submitted: auto-generated`` (RFC 3834)
keeps out-of-office replies away from the sender address.

Every failure is a :class:`ChannelError` whose reason says what went wrong (``refused``,
``timeout``, ``tls``, ``auth``, ``rejected``, ``protocol``, ``config``).
"""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from pathlib import Path
from typing import Literal

from cloud.alerts.channels.errors import ChannelError
from cloud.alerts.channels.render import RenderedMessage
from cloud.settings import CloudSettings

Security = Literal["none", "starttls", "tls"]
DEFAULT_PORTS = {"none": 25, "starttls": 587, "tls": 465}


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    host: str | None
    """None: e-mail is not configured (every attempt fails with reason ``config``)."""
    port: int | None = None
    """Default by ``security``: 25, 587 (submission with STARTTLS) or 465 (implicit TLS)."""
    security: Security = "starttls"
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    sender: str = "rpm-alerts@localhost"
    timeout_s: float = 10.0

    @classmethod
    def from_settings(cls, settings: CloudSettings) -> SmtpConfig:
        return cls(host=settings.smtp_host, port=settings.smtp_port, security=settings.smtp_security,
                   username=settings.smtp_username, password=settings.smtp_password, ca_file=settings.smtp_ca_file,
                   sender=settings.smtp_from, timeout_s=settings.smtp_timeout_s)

    @property
    def effective_port(self) -> int:
        return self.port or DEFAULT_PORTS[self.security]

    def tls_context(self) -> ssl.SSLContext:
        try:
            return ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        except (OSError, ssl.SSLError) as err:
            raise ChannelError("config", f"cannot read RPM_SMTP_CA_FILE {self.ca_file}: {err}") from err


def build_message(message: RenderedMessage, *, sender: str, to: str, message_id: str,
                  at: datetime | None = None) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = to
    mail["Subject"] = message.subject
    mail["Date"] = format_datetime(at or datetime.now(UTC))
    mail["Message-ID"] = message_id
    mail["Auto-Submitted"] = "auto-generated"
    mail.set_content(message.text)
    mail.add_alternative(message.html, subtype="html")
    return mail


def message_id(delivery_id: int, sender: str) -> str:
    domain = sender.rsplit("@", 1)[-1].strip("<> ") or "localhost"
    return f"<rpm.delivery.{delivery_id}@{domain}>"


class Mailer:
    """Sends one message per SMTP session (a pass sends few; a long-lived session goes stale between them)."""

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config

    def send(self, to: str, message: RenderedMessage, *, delivery_id: int) -> None:
        config = self.config
        if not config.host:
            raise ChannelError("config", "e-mail is not configured (RPM_SMTP_HOST)")
        mail = build_message(message, sender=config.sender, to=to, message_id=message_id(delivery_id, config.sender))
        where = f"{config.host}:{config.effective_port}"
        try:
            with self._connect() as smtp:
                if config.security == "starttls":
                    smtp.ehlo()
                    if not smtp.has_extn("starttls"):
                        raise ChannelError("tls", f"{where} does not offer STARTTLS")
                    smtp.starttls(context=config.tls_context())
                    smtp.ehlo()
                if config.username:
                    smtp.login(config.username, config.password or "")
                refused = smtp.send_message(mail, from_addr=_bare(config.sender), to_addrs=[to])
        except ChannelError:
            raise
        except smtplib.SMTPAuthenticationError as err:
            raise ChannelError("auth", f"{where} refused the login: {_reply(err)}") from err
        except smtplib.SMTPRecipientsRefused as err:
            codes = ", ".join(f"{code} {_text(text)}" for code, text in err.recipients.values())
            raise ChannelError("rejected", f"{where} refused {to}: {codes}",
                               permanent=_permanent(err.recipients)) from err
        except smtplib.SMTPSenderRefused as err:
            raise ChannelError("rejected", f"{where} refused the sender {config.sender}: {_reply(err)}") from err
        except smtplib.SMTPDataError as err:
            raise ChannelError("rejected", f"{where} refused the message: {_reply(err)}",
                               permanent=500 <= err.smtp_code < 600) from err
        except smtplib.SMTPNotSupportedError as err:
            raise ChannelError("protocol", f"{where}: {err}") from err
        except smtplib.SMTPConnectError as err:
            raise ChannelError("refused", f"{where} refused the connection: {_reply(err)}") from err
        except smtplib.SMTPServerDisconnected as err:
            raise ChannelError("protocol", f"{where} closed the connection: {err}") from err
        except smtplib.SMTPException as err:
            raise ChannelError("protocol", f"{where}: {err}") from err
        except ssl.SSLCertVerificationError as err:
            raise ChannelError("tls", f"{where} certificate not trusted: {err.verify_message}") from err
        except ssl.SSLError as err:
            raise ChannelError("tls", f"{where} TLS failed: {err}") from err
        except TimeoutError as err:
            raise ChannelError("timeout", f"{where} did not answer within {config.timeout_s:g} s") from err
        except ConnectionRefusedError as err:
            raise ChannelError("refused", f"{where} refused the connection") from err
        except OSError as err:
            raise ChannelError("refused", f"{where} unreachable: {err}") from err
        if refused:
            raise ChannelError("rejected", f"{where} refused {', '.join(refused)}", permanent=_permanent(refused))

    def _connect(self) -> smtplib.SMTP:
        config = self.config
        assert config.host is not None
        if config.security == "tls":
            return smtplib.SMTP_SSL(config.host, config.effective_port, timeout=config.timeout_s,
                                    context=config.tls_context())
        return smtplib.SMTP(config.host, config.effective_port, timeout=config.timeout_s)


def _bare(address: str) -> str:
    return parseaddr(address)[1] or address


def _text(value: bytes | str) -> str:
    return (value.decode(errors="replace") if isinstance(value, bytes) else value).strip()[:200]


def _reply(err: smtplib.SMTPResponseException | smtplib.SMTPSenderRefused) -> str:
    return f"{err.smtp_code} {_text(err.smtp_error)}"


def _permanent(refused: dict[str, tuple[int, bytes]]) -> bool:
    """5xx for every recipient: the server will not take it later either (4xx is 'try again')."""
    return all(500 <= code < 600 for code, _ in refused.values())
