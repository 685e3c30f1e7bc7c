package routes

import (
	"encoding/json"
	"sort"
	"strconv"
	"strings"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/sinks"
)

// Schema returns a JSON Schema (draft 2020-12) of the rules file, built
// from the registered sink types, for editors (yaml-language-server).
func Schema() ([]byte, error) {
	obj := func(props map[string]any, required ...string) map[string]any {
		o := map[string]any{"type": "object", "additionalProperties": false, "properties": props}
		if len(required) > 0 {
			o["required"] = required
		}
		return o
	}
	oneOrMany := func(item map[string]any) map[string]any {
		return map[string]any{"oneOf": []any{item, map[string]any{"type": "array", "minItems": 1, "items": item}}}
	}
	enum := func(desc string, vals ...string) map[string]any {
		return map[string]any{"enum": vals, "description": desc}
	}
	str := func(desc string) map[string]any { return map[string]any{"type": "string", "description": desc} }

	defs := map[string]any{}
	var sinkRefs []any
	overrides := map[string]any{"sink": str("name of a sink defined under sinks:")}
	for _, t := range sinks.Types() {
		props := map[string]any{"type": map[string]any{"const": t.Name, "description": t.Doc}}
		required := []string{"type"}
		for _, s := range t.Settings {
			props[s.Name] = settingSchema(s)
			if s.Required {
				required = append(required, s.Name)
			}
			if s.Override {
				overrides[s.Name] = settingSchema(s)
			}
		}
		def := obj(props, required...)
		def["description"] = t.Doc
		defs["sink_"+t.Name] = def
		sinkRefs = append(sinkRefs, map[string]any{"$ref": "#/$defs/sink_" + t.Name})
	}
	statuses := make([]string, len(builds.AllStatuses))
	for i, s := range builds.AllStatuses {
		statuses[i] = string(s)
	}
	events := append(append([]string(nil), KnownEvents...), "*")
	defs["match"] = obj(map[string]any{
		"event":   oneOrMany(enum("event types (default build-state-changed; * for all)", events...)),
		"project": oneOrMany(str("project name glob; !glob excludes")),
		"branch":  oneOrMany(str("branch glob (* stops at /, ** does not); !glob excludes")),
		"state":   oneOrMany(enum("build state", states...)),
		"result":  oneOrMany(enum("build result", results...)),
		"status":  oneOrMany(enum("build status", statuses...)),
		"author":  oneOrMany(str("author name or email glob, case-insensitive")),
		"if":      str("expr-lang expression over the event (build.branch, project.name, previous.result, data.x, …)"),
	})
	defs["target"] = map[string]any{"oneOf": []any{
		str("name of a sink"),
		obj(overrides, "sink"),
	}}
	defs["route"] = obj(map[string]any{
		"name":   str("route name, unique in the file"),
		"match":  map[string]any{"$ref": "#/$defs/match"},
		"notify": enum("always (default), change (only when the build turns from passing to failing or back), never", NotifyModes...),
		"to":     oneOrMany(map[string]any{"$ref": "#/$defs/target"}),
	}, "name", "to")
	defs["alert"] = obj(map[string]any{
		"name":     str("alert name, unique in the file"),
		"if":       str("expr-lang condition over the system figures: " + strings.Join(FigureNames(), ", ")),
		"for":      str("how long the condition must hold before the alert fires, e.g. 5m (default 0s)"),
		"severity": enum("info, warning (default) or critical", Severities...),
		"summary":  str("what the alert means, for the people it is sent to"),
	}, "name", "if")
	sort.Slice(sinkRefs, func(i, j int) bool {
		return sinkRefs[i].(map[string]any)["$ref"].(string) < sinkRefs[j].(map[string]any)["$ref"].(string)
	})
	schema := map[string]any{
		"$schema":              "https://json-schema.org/draft/2020-12/schema",
		"title":                "buildbridge rules",
		"type":                 "object",
		"additionalProperties": false,
		"properties": map[string]any{
			"version": map[string]any{"const": 1},
			"sinks": map[string]any{
				"type":                 "object",
				"propertyNames":        map[string]any{"pattern": sinkNameRe.String()},
				"additionalProperties": map[string]any{"oneOf": sinkRefs},
			},
			"routes": map[string]any{"type": "array", "items": map[string]any{"$ref": "#/$defs/route"}},
			"alerts": map[string]any{"type": "array", "items": map[string]any{"$ref": "#/$defs/alert"}},
		},
		"$defs": defs,
	}
	return json.MarshalIndent(schema, "", "  ")
}

func settingSchema(s sinks.Setting) map[string]any {
	ref := map[string]any{"type": "string", "pattern": `\$\{|^file:`}
	var out map[string]any
	switch s.Kind {
	case sinks.KindInt:
		out = map[string]any{"anyOf": []any{map[string]any{"type": "integer"}, ref}}
	case sinks.KindBool:
		out = map[string]any{"anyOf": []any{map[string]any{"type": "boolean"}, ref}}
	case sinks.KindEnum:
		out = map[string]any{"anyOf": []any{map[string]any{"enum": s.Enum}, ref}}
	case sinks.KindStringList, sinks.KindTemplateList:
		out = map[string]any{"oneOf": []any{map[string]any{"type": "string"},
			map[string]any{"type": "array", "minItems": 1, "items": map[string]any{"type": "string"}}}}
	case sinks.KindStringMap:
		out = map[string]any{"type": "object", "additionalProperties": map[string]any{"type": "string"}}
	default:
		out = map[string]any{"type": "string"}
	}
	out["description"] = s.Doc
	if s.Default != "" && !s.Kind.IsTemplate() {
		var def any = s.Default
		switch s.Kind {
		case sinks.KindInt:
			def, _ = strconv.ParseInt(s.Default, 10, 64)
		case sinks.KindBool:
			def = s.Default == "true"
		}
		out["default"] = def
	}
	return out
}
