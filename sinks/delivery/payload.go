package delivery

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/buildbridge/buildbridge/event"
	"github.com/buildbridge/buildbridge/sinks"
	"github.com/buildbridge/buildbridge/store"
)

// payloadHeader is what a stored delivery keeps, besides its body, to be
// sent again after a restart: the event for sinks that read it, and the
// rendered parts. The identity (event id, sink, type, target) is in the
// row's columns.
type payloadHeader struct {
	// Event is left out when the body is the event's JSON (the default
	// webhook and channel message): EventInBody is set then.
	Event       *event.Envelope   `json:"event,omitempty"`
	EventInBody bool              `json:"event_in_body,omitempty"`
	Route       string            `json:"route,omitempty"`
	Subject     string            `json:"subject,omitempty"`
	ContentType string            `json:"content_type,omitempty"`
	Params      map[string]string `json:"params,omitempty"`
}

// encodePayload writes the header as one line of JSON (which never holds
// a raw newline), then the body as it is: no base64 to store and decode.
// The event is left out when the rules say the body is its JSON.
func encodePayload(d *sinks.Delivery) ([]byte, error) {
	h := payloadHeader{Event: &d.Event, Route: d.Route, Subject: d.Subject, ContentType: d.ContentType, Params: d.Params}
	if d.BodyIsEvent {
		h.Event, h.EventInBody = nil, true
	}
	hdr, err := json.Marshal(h)
	if err != nil {
		return nil, fmt.Errorf("encode delivery of event %s to %s: %w", d.EventID, d.Sink, err)
	}
	out := make([]byte, 0, len(hdr)+1+len(d.Body))
	out = append(append(append(out, hdr...), '\n'), d.Body...)
	return out, nil
}

func decodePayload(row *store.SinkDelivery, raw []byte) (*sinks.Delivery, error) {
	hdr, body, ok := bytes.Cut(raw, []byte{'\n'})
	var p payloadHeader
	if !ok {
		return nil, fmt.Errorf("delivery %d: stored payload unreadable: no header", row.ID)
	}
	if err := json.Unmarshal(hdr, &p); err != nil {
		return nil, fmt.Errorf("delivery %d: stored payload unreadable: %w", row.ID, err)
	}
	var ev event.Envelope
	switch {
	case p.EventInBody:
		if err := json.Unmarshal(body, &ev); err != nil {
			return nil, fmt.Errorf("delivery %d: stored event unreadable: %w", row.ID, err)
		}
	case p.Event != nil:
		ev = *p.Event
	}
	return &sinks.Delivery{EventID: row.EventID, Event: ev, Route: p.Route, Sink: row.Sink, SinkType: row.SinkType,
		Target: row.Target, Subject: p.Subject, Body: body, ContentType: p.ContentType, Params: p.Params}, nil
}

// Message returns the message a stored delivery sends (its rendered body,
// subject, parameters and event); row must hold its payload
// (store.DB.SinkDelivery loads it).
func Message(row store.SinkDelivery) (sinks.Delivery, error) {
	d, err := decodePayload(&row, row.Payload)
	if err != nil {
		return sinks.Delivery{}, err
	}
	return *d, nil
}
