package delivery

import (
	"encoding/json"
	"fmt"

	"github.com/buildbridge/buildbridge/event"
	"github.com/buildbridge/buildbridge/sinks"
	"github.com/buildbridge/buildbridge/store"
)

// payload is what a stored delivery keeps to be sent again after a
// restart: the rendered message, and the event for sinks that read it.
// The identity (event id, sink, type, target) is in the row's columns.
type payload struct {
	Event       event.Envelope    `json:"event"`
	Route       string            `json:"route,omitempty"`
	Subject     string            `json:"subject,omitempty"`
	Body        []byte            `json:"body"`
	ContentType string            `json:"content_type,omitempty"`
	Params      map[string]string `json:"params,omitempty"`
}

func encodePayload(d *sinks.Delivery) ([]byte, error) {
	b, err := json.Marshal(payload{Event: d.Event, Route: d.Route, Subject: d.Subject, Body: d.Body,
		ContentType: d.ContentType, Params: d.Params})
	if err != nil {
		return nil, fmt.Errorf("encode delivery of event %s to %s: %w", d.EventID, d.Sink, err)
	}
	return b, nil
}

func decodePayload(row *store.SinkDelivery, raw []byte) (*sinks.Delivery, error) {
	var p payload
	if err := json.Unmarshal(raw, &p); err != nil {
		return nil, fmt.Errorf("delivery %d: stored payload unreadable: %w", row.ID, err)
	}
	return &sinks.Delivery{EventID: row.EventID, Event: p.Event, Route: p.Route, Sink: row.Sink, SinkType: row.SinkType,
		Target: row.Target, Subject: p.Subject, Body: p.Body, ContentType: p.ContentType, Params: p.Params}, nil
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
