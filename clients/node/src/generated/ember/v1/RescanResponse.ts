// Original file: proto/ember/v1/ember.proto


export interface RescanResponse {
  'loaded'?: (string)[];
  'reloaded'?: (string)[];
  'unloaded'?: (string)[];
  'refused'?: ({[key: string]: string});
}

export interface RescanResponse__Output {
  'loaded': (string)[];
  'reloaded': (string)[];
  'unloaded': (string)[];
  'refused': ({[key: string]: string});
}
