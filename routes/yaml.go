package routes

import (
	"errors"
	"io"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Limits that keep hostile files cheap to refuse.
const (
	// MaxFileSize is the largest rules file accepted.
	MaxFileSize = 4 << 20
	// maxNodes bounds the nodes of the document once aliases are
	// expanded (a "billion laughs" file stops here).
	maxNodes = 200_000
	maxDepth = 64
)

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// parseYAML parses one YAML document and returns its root with aliases
// expanded, merge keys (<<) applied and duplicate keys reported.
func parseYAML(data []byte, el *errList) *yaml.Node {
	if len(data) > MaxFileSize {
		el.add(0, 0, "", "file is larger than %d bytes", MaxFileSize)
		return nil
	}
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			el.add(1, 1, "", "the file is empty; an empty rules file is refused so that a half-written file never replaces working rules (write \"routes: []\" for no routes)")
			return nil
		}
		yamlError(err, el)
		return nil
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		el.add(extra.Line, extra.Column, "", "a rules file holds one YAML document; found a second one")
		return nil
	} else if !errors.Is(err, io.EOF) {
		yamlError(err, el)
		return nil
	}
	root := &doc
	if root.Kind == yaml.DocumentNode {
		if len(root.Content) == 0 {
			el.add(1, 1, "", "the file is empty")
			return nil
		}
		root = root.Content[0]
	}
	n := &normalizer{el: el, budget: maxNodes}
	return n.node(root, "", 0)
}

// yamlError turns a yaml.v3 parse error into located errors.
func yamlError(err error, el *errList) {
	var te *yaml.TypeError
	lines := []string{err.Error()}
	if errors.As(err, &te) {
		lines = te.Errors
	}
	for _, msg := range lines {
		msg = strings.TrimPrefix(msg, "yaml: ")
		if m := yamlLine.FindStringSubmatch("yaml: " + msg); m != nil {
			line, _ := strconv.Atoi(m[1])
			el.add(line, 1, "", "invalid YAML: %s", m[2])
			continue
		}
		el.add(0, 0, "", "invalid YAML: %s", msg)
	}
}

type normalizer struct {
	el     *errList
	budget int
	over   bool
}

// node returns a copy of n with aliases expanded and merges applied.
func (z *normalizer) node(n *yaml.Node, path string, depth int) *yaml.Node {
	if z.over {
		return nil
	}
	z.budget--
	if z.budget < 0 || depth > maxDepth {
		z.over = true
		z.el.add(n.Line, n.Column, "", "the document is too large or too deeply nested once aliases are expanded")
		return nil
	}
	switch n.Kind {
	case yaml.AliasNode:
		if n.Alias == nil {
			z.el.add(n.Line, n.Column, "", "unknown alias")
			return nil
		}
		return z.node(n.Alias, path, depth+1)
	case yaml.ScalarNode:
		c := *n
		return &c
	case yaml.SequenceNode:
		c := *n
		c.Content = make([]*yaml.Node, 0, len(n.Content))
		for i, it := range n.Content {
			if v := z.node(it, path+"["+strconv.Itoa(i)+"]", depth+1); v != nil {
				c.Content = append(c.Content, v)
			}
		}
		return &c
	case yaml.MappingNode:
		return z.mapping(n, path, depth)
	}
	z.el.add(n.Line, n.Column, "", "unexpected YAML node")
	return nil
}

func (z *normalizer) mapping(n *yaml.Node, path string, depth int) *yaml.Node {
	c := *n
	c.Content = nil
	type entry struct{ k, v *yaml.Node }
	var own, merged []entry
	ownAt := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.ScalarNode && k.Tag == "!!merge" {
			src := z.node(v, path, depth+1)
			if src == nil {
				continue
			}
			var maps []*yaml.Node
			switch src.Kind {
			case yaml.MappingNode:
				maps = []*yaml.Node{src}
			case yaml.SequenceNode:
				maps = src.Content
			}
			for _, m := range maps {
				if m.Kind != yaml.MappingNode {
					z.el.add(v.Line, v.Column, "", "<< merges a mapping or a list of mappings")
					continue
				}
				for j := 0; j+1 < len(m.Content); j += 2 {
					merged = append(merged, entry{m.Content[j], m.Content[j+1]})
				}
			}
			continue
		}
		if k.Kind != yaml.ScalarNode {
			z.el.add(k.Line, k.Column, "", "keys must be plain strings")
			continue
		}
		if first, ok := ownAt[k.Value]; ok {
			z.el.add(k.Line, k.Column, join(path, k.Value), "duplicate key (first at line %d)", first.Line)
			continue
		}
		ownAt[k.Value] = k
		kv := *k
		if vv := z.node(v, join(path, k.Value), depth+1); vv != nil {
			own = append(own, entry{&kv, vv})
		}
	}
	// Own keys win over merged ones; an earlier merge wins over a later one.
	for _, e := range merged {
		if _, ok := ownAt[e.k.Value]; ok {
			continue
		}
		ownAt[e.k.Value] = e.k
		kv := *e.k
		own = append(own, entry{&kv, e.v})
	}
	for _, e := range own {
		c.Content = append(c.Content, e.k, e.v)
	}
	return &c
}

// pairs iterates over a normalized mapping.
func pairs(n *yaml.Node) [][2]*yaml.Node {
	out := make([][2]*yaml.Node, 0, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		out = append(out, [2]*yaml.Node{n.Content[i], n.Content[i+1]})
	}
	return out
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.Tag == "!!null" }

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	if isNull(n) {
		return "nothing"
	}
	return "a scalar"
}
