package speaker

import (
	"context"
	"log/slog"

	"github.com/sirupsen/logrus"
)

// logHandler passes GoBGP's log lines to the plugin's logger, with their
// attributes as fields.
type logHandler struct {
	log   logrus.FieldLogger
	lvl   *slog.LevelVar
	attrs []slog.Attr
}

func (h logHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.lvl.Level() }

func (h logHandler) Handle(_ context.Context, r slog.Record) error {
	fields := logrus.Fields{"bgp": true}
	add := func(a slog.Attr) bool {
		fields[a.Key] = a.Value.String()
		return true
	}
	for _, a := range h.attrs {
		add(a)
	}
	r.Attrs(add)
	e := h.log.WithFields(fields)
	switch {
	case r.Level >= slog.LevelError:
		e.Error(r.Message)
	case r.Level >= slog.LevelWarn:
		e.Warn(r.Message)
	case r.Level >= slog.LevelInfo:
		e.Info(r.Message)
	default:
		e.Debug(r.Message)
	}
	return nil
}

func (h logHandler) WithAttrs(as []slog.Attr) slog.Handler {
	h.attrs = append(append([]slog.Attr(nil), h.attrs...), as...)
	return h
}

// WithGroup flattens groups: GoBGP's lines are short.
func (h logHandler) WithGroup(string) slog.Handler { return h }
