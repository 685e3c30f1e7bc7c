package email

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/textproto"
	"strings"

	gomail "github.com/wneessen/go-mail"

	"github.com/buildbridge/buildbridge/sinks/delivery"
)

// classify turns an SMTP failure into a delivery error: a 5xx reply is
// permanent, with the server's message; a 4xx reply, a refused or
// broken connection and a timeout are temporary; a certificate that is
// not trusted, a server without STARTTLS or without a usable AUTH
// mechanism are permanent: they need the configuration changed.
func classify(host string, err error) error {
	if err == nil {
		return nil
	}
	var se *gomail.SendError
	if errors.As(err, &se) {
		code := se.ErrorCode()
		switch {
		case code >= 500:
			return delivery.Permanent(fmt.Errorf("the SMTP server %s refused the mail: %w", host, err))
		case code >= 400 || se.IsTemp():
			return fmt.Errorf("the SMTP server %s deferred the mail: %w", host, err)
		}
	}
	var te *textproto.Error
	if errors.As(err, &te) {
		if te.Code >= 500 {
			return delivery.Permanent(fmt.Errorf("the SMTP server %s answered %d %s", host, te.Code, te.Msg))
		}
		return fmt.Errorf("the SMTP server %s answered %d %s", host, te.Code, te.Msg)
	}
	var (
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
		verify   *tls.CertificateVerificationError
	)
	if errors.As(err, &unknown) || errors.As(err, &hostname) || errors.As(err, &invalid) || errors.As(err, &verify) {
		return delivery.Permanent(fmt.Errorf("the TLS certificate of %s is not trusted: %w", host, err))
	}
	msg := err.Error()
	switch {
	case strings.Contains(msg, "does not support STARTTLS"):
		return delivery.Permanent(fmt.Errorf("%s offers no STARTTLS: set tls to tls (implicit, port 465) or check host and port: %w", host, err))
	case errors.Is(err, gomail.ErrNoSupportedAuthDiscovered), strings.Contains(msg, "does not support SMTP AUTH"),
		errors.Is(err, gomail.ErrPlainAuthNotSupported), errors.Is(err, gomail.ErrLoginAuthNotSupported):
		return delivery.Permanent(fmt.Errorf("%s offers no AUTH mechanism the sink can use (PLAIN or LOGIN): %w", host, err))
	case strings.Contains(msg, "unencrypted connection"):
		return delivery.Permanent(fmt.Errorf("%s: the password would go in clear: use tls or starttls, or allow_insecure: %w", host, err))
	}
	return fmt.Errorf("sending to %s: %w", host, err)
}
